"""The soft forward's tile plan, before and after session 12, in one process on the same inputs: the fused kernel
(`amf_forward`, soft, heads already concatenated) against the bare float32 GEMM of the same run, interleaved, the
median of the per-round ratios. "before" sets the knobs back to the old rule (768-row tiles, 4 MiB budget);
"after" is the default (csrc/amf_cpu_tiling.h: at cpu-5b the same plan; at 5B-f6 193-row tiles, one frame's within
L2). Both use the key-group-major order. The recorded output is from the first session-12 rule, whose plan at both
presets is the one of the final rule.
Run: OMP_NUM_THREADS=2 .venv/bin/python docs/runs/soft_tiles/ab.py [ROUNDS]"""

import os
import sys
import time

import torch

from ditflow_fast import _native
from ditflow_fast.backends.layout import concat_heads
from ditflow_fast.bench.cases import CaseSpec, make_inputs

BEFORE = {"DITFLOW_FAST_CPU_ROWS": "768", "DITFLOW_FAST_CPU_TILE_KB": "4096"}


def timed(f, env):
    os.environ.update(env)
    try:
        t0 = time.perf_counter()
        f()
        return time.perf_counter() - t0
    finally:
        for name in env:
            del os.environ[name]


def compare(preset, rounds):
    spec = CaseSpec("cpu", "soft", preset, "float32", "cpu", 0)
    g = spec.geometry
    q, k = make_inputs(spec)
    qc, kc = concat_heads(q, g.text_tokens, torch.float32), concat_heads(k, g.text_tokens, torch.float32)
    del q, k

    def soft():
        return _native.ops().amf_forward(qc, kc, g.frames, g.height, g.width, 0.125, True)

    rows = {"gemm": (lambda: torch.mm(qc[0], kc[0].t()), {}), "before": (soft, BEFORE), "after": (soft, {})}
    times = {name: [] for name in rows}
    for f, env in rows.values():
        timed(f, env)
    for _ in range(rounds):
        for name, (f, env) in rows.items():
            times[name].append(timed(f, env))
    for name, ts in times.items():
        ratios = sorted(t / base for t, base in zip(ts, times["gemm"], strict=True))
        print(f"{preset:16s} {name:7s} median {sorted(ts)[rounds // 2] * 1e3:8.1f} ms   "
              f"per-round ratio to the GEMM: median {ratios[rounds // 2]:.3f} "
              f"(range {ratios[0]:.3f}-{ratios[-1]:.3f})", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    for preset in ("cpu-5b", "cogvideox-5b-f6"):
        compare(preset, int(sys.argv[1]) if len(sys.argv) > 1 else 9)
