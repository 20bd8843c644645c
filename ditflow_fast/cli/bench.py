"""``ditflow-fast bench``: run a preset's cases through the harness, print the table, append the record."""

from __future__ import annotations

import argparse
from pathlib import Path


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _csv_option(text: str | None, option: str) -> tuple[str, ...] | None:
    """The names of a comma-separated option; None when it was not given; an error when it names nothing."""
    if text is None:
        return None
    names = tuple(_csv(text))
    if not names:
        raise ValueError(f"{option} names nothing (got {text!r}); leave it out for the default")
    return names


def _run(args) -> int:
    from ..bench.presets import DEFAULT_PRESET, PRESETS, get_preset
    from ..bench.spec import LAYOUTS, MODES

    if args.list_presets:
        for name, preset in PRESETS.items():
            g = preset.geometry
            print(f"{name:<18} H={g.heads:<3} d={g.head_dim:<4} F={g.frames:<3} {g.height}x{g.width}  "
                  f"N={g.tokens:<6} text={g.text_tokens:<4} {preset.summary}")
        return 0
    if args.chart is not None:
        if Path(args.chart).suffix.lower() != ".svg":
            raise ValueError(f"--chart must name an .svg file, got {args.chart!r}")
        from ..atomic import check_writable

        check_writable(args.chart, option="--chart")
    if args.from_record:
        return _report(args)
    args.preset = args.preset or DEFAULT_PRESET
    args.repeats = 5 if args.repeats is None else args.repeats
    args.warmup = 1 if args.warmup is None else args.warmup
    geometry = get_preset(args.preset).geometry  # an unknown name fails before anything slow happens
    if args.perf_model:
        from ..bench.perf_model import GPU_PEAKS, floor_table

        print(f"perf model of {args.preset} (N={geometry.tokens}, H={geometry.heads}, d={geometry.head_dim}), "
              "bf16 inputs, datasheet peaks:")
        for r in floor_table(geometry):
            print(f"  {r['gpu']:<9} {r['mode']:<13} {r['gflop']:10.1f} GFLOP {r['min_mb']:9.1f} MB min  "
                  f"floor {r['floor_ms']:.3g} ms")
        print("peaks: " + "; ".join(p.source for p in GPU_PEAKS.values()))
        return 0
    # Every argument is checked before anything is timed, so a run is never lost to a typo.
    modes = _csv_option(args.modes, "--modes") or MODES
    impls = _csv_option(args.backends, "--backends")
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"--modes must be among {', '.join(MODES)}, got {', '.join(bad)}")
    if args.dtype:
        from ..bench.spec import parse_dtype

        parse_dtype(args.dtype)
    if args.device:
        import torch

        if args.device.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"--device must be cpu or cuda, got {args.device!r}")
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: torch sees no CUDA device here")
    if args.layout not in (None, *LAYOUTS):
        raise ValueError(f"--layout must be one of {', '.join(LAYOUTS)}, got {args.layout!r}")
    if args.repeats < 1 or args.warmup < 0:
        raise ValueError(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    if args.mem_limit is not None and args.mem_limit < 0:
        raise ValueError(f"--mem-limit must be >= 0 bytes, got {args.mem_limit}")
    from ..atomic import check_writable
    from ..bench.record import append_record, default_results_path, machine_info
    from ..bench.report import format_table
    from ..bench.runner import run_bench

    out = Path(args.out) if args.out else default_results_path(machine_info())
    check_writable(out, option="--out")
    record = run_bench(args.preset, impls=list(impls) if impls else None, modes=modes,
                       dtype=args.dtype, device=args.device, repeats=args.repeats, warmup=args.warmup,
                       memory=not args.no_memory, mem_limit=args.mem_limit, refcheck=args.refcheck is not False,
                       layout=args.layout or "bhtd",
                       progress=lambda s: print(s, flush=True))
    print()
    print(format_table(record))
    print(f"\nappended to {append_record(record, out)}")
    _write_chart(args.chart, record)
    return 0


def _write_chart(path: str | None, record: dict) -> None:
    if path is not None:
        from ..atomic import write_text
        from ..bench.chart import chart_svg

        print(f"chart: {write_text(path, chart_svg(record))}")


def _report(args) -> int:
    """``--from``: the table (and ``--chart``) of a recorded run; nothing is run."""
    given = [o for o, v in (("--backends", args.backends), ("--modes", args.modes), ("--dtype", args.dtype),
                            ("--device", args.device), ("--out", args.out), ("--mem-limit", args.mem_limit),
                            ("--no-memory", args.no_memory or None), ("--perf-model", args.perf_model or None),
                            ("--repeats", args.repeats), ("--warmup", args.warmup), ("--[no-]refcheck", args.refcheck),
                            ("--layout", args.layout))
             if v is not None]
    if given:
        raise ValueError(f"--from re-reports a recorded run: {', '.join(given)} would be ignored")
    from ..bench.record import read_record
    from ..bench.report import format_table

    record = read_record(Path(args.from_record), args.preset)
    print(format_table(record))
    _write_chart(args.chart, record)
    return 0


def add_bench_parser(sub) -> None:
    from ..bench.presets import DEFAULT_PRESET

    p = sub.add_parser("bench", help="benchmark the AMF backends on a named preset",
                       description="Time every available backend (and the research procedure, the bare GEMM "
                                   "floor and the peer rows) on one preset; print a table and append a JSON "
                                   "line to benchmarks/results/<machine>.jsonl.")
    p.add_argument("--preset", help=f"shape preset (default {DEFAULT_PRESET}; see --list-presets; with --from, "
                                    "the last record of this preset)")
    p.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    p.add_argument("--perf-model", action="store_true",
                   help="print the preset's FLOPs, minimum bytes and datasheet floor times on A100/H100/RTX 4090, "
                        "and exit")
    p.add_argument("--backends", help="comma-separated backends/peers (default: all but 'reference'); "
                                      "the research row and the GEMM floor are always run")
    p.add_argument("--modes", help="comma-separated among argmax,soft,soft_fwd_bwd (default: all)")
    p.add_argument("--dtype", help="input dtype: float32 (CPU default), bfloat16 (CUDA default), float16")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--layout", help="how q and k lie in memory: bhtd, contiguous [B, H, T, d] as CogVideoX's "
                                    "processor hands them over (default), or bthd, [B, H, T, d] views of [B, T, H, d] "
                                    "tensors as the Wan, LTX-Video and HunyuanVideo processors do")
    p.add_argument("--repeats", type=int, help="timed runs per case (default 5)")
    p.add_argument("--warmup", type=int, help="untimed runs before them (default 1)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probe (one subprocess per case)")
    p.add_argument("--refcheck", action=argparse.BooleanOptionalAction,
                   help="before timing a row, compare its AMF with the float64 reference on the same inputs "
                        "(on a reduced problem for presets too large for it) and mark a row that disagrees "
                        "WRONG instead of timing it (default: on; --no-refcheck skips the check)")
    p.add_argument("--mem-limit", type=int, metavar="BYTES",
                   help="largest predicted peak of a materialising case that is still run "
                        "(default: 60%% of available memory)")
    p.add_argument("--out", help="JSON-lines file to append to (default benchmarks/results/<machine>.jsonl)")
    p.add_argument("--chart", metavar="FILE.svg",
                   help="also draw the run as an SVG chart: per mode, each row's time over the GEMM's")
    p.add_argument("--from", dest="from_record", metavar="RESULTS.jsonl",
                   help="run nothing: print the table of the file's last record (of --preset, when given) "
                        "and, with --chart, draw it")
    p.set_defaults(func=_run)
