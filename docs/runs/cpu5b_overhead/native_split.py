"""The native soft forward (scores kept) and backward alone at cpu-5b, against the GEMM, one process (float32).

Usage: OMP_NUM_THREADS=2 python native_split.py
"""
import statistics
import time

import torch

from ditflow_fast import _native

torch.manual_seed(0)
frames, h, w, d = 4, 15, 22, 3072
n = frames * h * w
qc, kc = torch.randn(1, n, d), torch.randn(1, n, d)
ops = _native.ops()
alpha = 2 / (48 * 8)
g = torch.randn(1, n, frames, 2)
times = {"gemm": [], "fwd_keep": [], "bwd_kept": [], "bwd_recomp": []}
for i in range(10):
    t = [time.perf_counter()]
    torch.mm(qc[0], kc[0].T)
    t.append(time.perf_counter())
    target, lse, scores = ops.amf_forward_scores(qc, kc, frames, h, w, alpha)
    t.append(time.perf_counter())
    ops.amf_backward(qc, kc, target, lse, g, frames, h, w, alpha, True, True, scores)
    t.append(time.perf_counter())
    ops.amf_backward(qc, kc, target, lse, g, frames, h, w, alpha, True, True, None)
    t.append(time.perf_counter())
    if i >= 2:
        for j, name in enumerate(times):
            times[name].append(t[j + 1] - t[j])
med = {name: 1e3 * statistics.median(ts) for name, ts in times.items()}
print({name: round(ms, 1) for name, ms in med.items()}, {name: round(ms / med["gemm"], 3) for name, ms in med.items()})
