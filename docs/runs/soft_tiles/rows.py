"""The soft forward's rows per tile at one shape: the kernel alone (`amf_forward`, soft, random normal float32
inputs already heads-concatenated) against the whole float32 GEMM, interleaved, the median of the per-round ratios.
Variants are `ROWS:TILE_KB` (the knobs DITFLOW_FAST_CPU_ROWS and DITFLOW_FAST_CPU_TILE_KB) or `new` (no knobs).
MODE=argmax in the environment times the argmax forward instead (its tile plan takes the same knobs).
Run: [MODE=argmax] OMP_NUM_THREADS=2 .venv/bin/python docs/runs/soft_tiles/rows.py FRAMES H W D ROUNDS VARIANT..."""

import os
import sys

import torch
from ab import timed  # this folder

from ditflow_fast import _native

torch.set_num_threads(2)
frames, h, w, d, rounds = (int(x) for x in sys.argv[1:6])
variants = sys.argv[6:]


n = frames * h * w
gen = torch.Generator().manual_seed(0)
qc, kc = torch.randn(1, n, d, generator=gen), torch.randn(1, n, d, generator=gen)


SOFT = os.environ.get("MODE", "soft") == "soft"


def soft():
    return _native.ops().amf_forward(qc, kc, frames, h, w, 0.1, SOFT)


rows = {"gemm": (lambda: torch.mm(qc[0], kc[0].t()), {})}
for v in variants:
    names = ("DITFLOW_FAST_CPU_ROWS", "DITFLOW_FAST_CPU_TILE_KB")
    knobs = {} if v == "new" else dict(zip(names, v.split(":"), strict=True))
    rows[v] = (soft, knobs)
for f, env in rows.values():
    timed(f, env)
times = {name: [] for name in rows}
for _ in range(rounds):
    for name, (f, env) in rows.items():
        times[name].append(timed(f, env))
ratios = {v: sorted(t / g for t, g in zip(times[v], times["gemm"], strict=True)) for v in variants}
print(f"frames={frames} {h}x{w} D={d}: gemm {sorted(times['gemm'])[rounds // 2] * 1e3:.0f} ms; "
      + "; ".join(f"{v} {r[rounds // 2]:.3f}" for v, r in ratios.items()), flush=True)
