"""Where the `cpu` backend's forward time goes at a preset, float32, one process, interleaved, each round's times over
the bare GEMM of the same round (median of the per-round ratios): the GEMM `Q_cat @ K_cat^T`; the native kernel
alone on heads-concatenated inputs; the heads-concatenation copies alone; the whole `compute_amf` call; and, in
argmax mode, the faiss `IndexFlatIP` peer of the bench (when faiss is installed).
Run: OMP_NUM_THREADS=2 .venv/bin/python docs/runs/zen3_goals/parts.py PRESET ROUNDS [argmax|soft]"""

import importlib.util
import statistics
import sys
import time

import torch

from ditflow_fast import _native, compute_amf
from ditflow_fast.backends.layout import concat_heads
from ditflow_fast.bench.cases import CaseSpec, make_inputs
from ditflow_fast.bench.peers import faiss_forward

torch.set_num_threads(2)
preset, rounds = sys.argv[1], int(sys.argv[2])
mode = sys.argv[3] if len(sys.argv) > 3 else "argmax"
spec = CaseSpec("cpu", mode, preset, "float32", "cpu", 0)
g = spec.geometry
q, k = make_inputs(spec)
qc, kc = concat_heads(q, g.text_tokens, torch.float32), concat_heads(k, g.text_tokens, torch.float32)
parts = {
    "gemm": lambda: torch.mm(qc[0], kc[0].t()),
    "kernel": lambda: _native.ops().amf_forward(qc, kc, g.frames, g.height, g.width, 1.0, mode == "soft"),
    "concat": lambda: (concat_heads(q, g.text_tokens, torch.float32), concat_heads(k, g.text_tokens, torch.float32)),
    "compute_amf": lambda: compute_amf(q, k, frames=g.frames, height=g.height, width=g.width,
                                       text_tokens=g.text_tokens, mode=mode, backend="cpu"),
}
if mode == "argmax" and importlib.util.find_spec("faiss"):
    parts["faiss"] = faiss_forward(g, q, k)
for f in parts.values():
    f()
times = {name: [] for name in parts}
for _ in range(rounds):
    for name, f in parts.items():
        t0 = time.perf_counter()
        f()
        times[name].append(time.perf_counter() - t0)
print(f"{preset} {mode}, {rounds} rounds: " + "; ".join(
    f"{name} {statistics.median(ts) * 1e3:.1f} ms "
    f"({statistics.median(t / base for t, base in zip(ts, times['gemm'], strict=True)):.3f})"
    for name, ts in times.items()))
