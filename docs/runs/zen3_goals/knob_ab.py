"""The `cpu` backend as built against the same with one of its knobs set (KNOB=VALUE, read per call), through
`compute_amf` on the bench's inputs, one process, the two interleaved (order alternating) and each call paired
with the GEMM `Q_cat @ K_cat^T` timed just before it. Prints per arm the median time and the median of the
per-call ratios to the GEMM. Knobs compared in session 18: DITFLOW_FAST_CPU_STATIC=1 (the forward's fixed share
of work items; this script was then dynamic.py, with that knob built in) and DITFLOW_FAST_CPU_PAD=0 (tiles as
wide as their frames).
Run: OMP_NUM_THREADS=2 .venv/bin/python docs/runs/zen3_goals/knob_ab.py PRESET ROUNDS KNOB=VALUE [MODE...]"""

import os
import statistics
import sys
import time

import torch

from ditflow_fast import compute_amf
from ditflow_fast.backends.layout import concat_heads
from ditflow_fast.bench.cases import CaseSpec, make_inputs

torch.set_num_threads(2)
preset, rounds = sys.argv[1], int(sys.argv[2])
knob, _, value = sys.argv[3].partition("=")
modes = sys.argv[4:] or ["argmax", "soft"]
spec = CaseSpec("cpu", "soft", preset, "float32", "cpu", 0)
g = spec.geometry
q, k = make_inputs(spec)
qc, kc = concat_heads(q, g.text_tokens, torch.float32), concat_heads(k, g.text_tokens, torch.float32)


def timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def call(mode, static):
    if static:
        os.environ[knob] = value
    try:
        return timed(lambda: compute_amf(q, k, frames=g.frames, height=g.height, width=g.width,
                                         text_tokens=g.text_tokens, mode=mode, backend="cpu"))
    finally:
        os.environ.pop(knob, None)


for mode in modes:
    arms = {sys.argv[3]: True, "as built": False}
    for static in arms.values():
        call(mode, static)
    got = {name: [] for name in arms}
    for r in range(rounds):
        order = list(arms.items()) if r % 2 == 0 else list(arms.items())[::-1]
        for name, static in order:
            gemm = timed(lambda: torch.mm(qc[0], kc[0].t()))
            got[name].append((call(mode, static), gemm))
    print(f"{preset} {mode}, {rounds} rounds: " + "; ".join(
        f"{name} {statistics.median(t for t, _ in v) * 1e3:.1f} ms ({statistics.median(t / b for t, b in v):.3f}x)"
        for name, v in got.items()), flush=True)
