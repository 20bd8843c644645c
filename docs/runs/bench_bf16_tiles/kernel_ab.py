"""The kernel alone on bf16 inputs: the bf16 tiles against the float32 path and both GEMMs, in one process.

Usage: OMP_NUM_THREADS=2 python kernel_ab.py cpu5b|f6
"""
import statistics
import sys
import time

import torch

from ditflow_fast import _native

ops = _native.ops()
torch.manual_seed(0)
frames, h, w, d = {"cpu5b": (4, 15, 22, 3072), "f6": (6, 30, 45, 3072)}[sys.argv[1]]
n = frames * h * w
q, k = torch.randn(1, n, d).bfloat16(), torch.randn(1, n, d).bfloat16()
qf, kf = q.float(), k.float()
alpha = 2 / (48 * 8)
calls = {
    "gemm fp32": lambda: torch.mm(qf[0], kf[0].T),
    "gemm bf16": lambda: torch.mm(q[0], k[0].T),
    "soft bf16": lambda: ops.amf_forward(q, k, frames, h, w, alpha, True),
    "soft fp32": lambda: ops.amf_forward(qf, kf, frames, h, w, alpha, True),
    "argmax bf16": lambda: ops.amf_forward(q, k, frames, h, w, alpha, False),
    "argmax fp32(screen)": lambda: ops.amf_forward(qf, kf, frames, h, w, alpha, False),
    "keep bf16": lambda: ops.amf_forward_scores(q, k, frames, h, w, alpha),
    "keep fp32": lambda: ops.amf_forward_scores(qf, kf, frames, h, w, alpha),
}
times = {name: [] for name in calls}
for rnd in range((7 if sys.argv[1] == "cpu5b" else 3) + 1):  # round 0 warms up
    for name, call in calls.items():
        t0 = time.perf_counter()
        call()
        if rnd:
            times[name].append(time.perf_counter() - t0)
med = {name: 1e3 * statistics.median(ts) for name, ts in times.items()}
for name, ms in med.items():
    print(f"{name:22s} {ms:8.1f} ms  {ms / med['gemm fp32']:.3f}x fp32 GEMM  {ms / med['gemm bf16']:.3f}x bf16 GEMM")
