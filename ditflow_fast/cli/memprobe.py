"""``python -m ditflow_fast.cli.memprobe``: one benchmark case's peak memory in a fresh process (the bench's
memory probe runs it; ``ditflow_fast.bench.memprobe`` holds the measurement)."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ditflow_fast.cli.memprobe", description=__doc__.splitlines()[0])
    ap.add_argument("--preset")
    ap.add_argument("--impl")
    ap.add_argument("--mode")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layout", default="bhtd", help="q, k layout of the case (the bench's --layout)")
    ap.add_argument("--alloc-mb", type=float, help="calibration: allocate and fill this many MiB instead of a case")
    args = ap.parse_args(argv)
    import torch

    if args.alloc_mb is not None:
        def run():
            return torch.ones(int(args.alloc_mb * 2**20) // 4, dtype=torch.float32, device=args.device)
    else:
        if not (args.preset and args.impl and args.mode):
            ap.error("--preset, --impl and --mode are required unless --alloc-mb is given")
        from ..bench.cases import CaseSpec, build_case

        run = build_case(CaseSpec(args.impl, args.mode, args.preset, args.dtype, args.device, args.seed,
                                  layout=args.layout))
    from ..bench.memprobe import cpu_peak_extra, cuda_peak_extra

    probe = cuda_peak_extra if args.device.startswith("cuda") else cpu_peak_extra
    print(json.dumps(probe(run)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
