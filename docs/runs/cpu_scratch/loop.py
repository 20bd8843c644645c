"""compute_amf called in a plain loop at cpu-5b (float32), the GEMM floor timed just before each call.

Prints per mode: the median ms, the paired ratio to the GEMM, and the minor page faults of 5 more calls.
Usage: DITFLOW_FAST_CPU_SCRATCH_MB=0|64 OMP_NUM_THREADS=2 python loop.py
"""
import os
import resource
import statistics

import torch

import ditflow_fast as df
from ditflow_fast.bench.timing import time_paired

torch.manual_seed(0)
b, heads, d, frames, h, w, text = 1, 48, 64, 4, 15, 22, 226
n = frames * h * w
q0, k0 = torch.randn(b, heads, text + n, d), torch.randn(b, heads, text + n, d)
g = torch.randn(b, frames, frames, h * w, 2)
qc = q0[0, :, text:].permute(1, 0, 2).reshape(n, -1).contiguous()
kc = k0[0, :, text:].permute(1, 0, 2).reshape(n, -1).contiguous()


def call(mode):
    grad = mode == "soft_fwd_bwd"
    q, k = q0.detach().requires_grad_(grad), k0.detach().requires_grad_(grad)
    out = df.compute_amf(q, k, frames=frames, height=h, width=w, text_tokens=text, backend="cpu",
                         mode="argmax" if mode == "argmax" else "soft")
    return torch.autograd.grad(out, (q, k), g) if grad else out


def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


print("DITFLOW_FAST_CPU_SCRATCH_MB =", os.environ.get("DITFLOW_FAST_CPU_SCRATCH_MB", "(default)"))
for mode in ("argmax", "soft", "soft_fwd_bwd"):
    times, floor = time_paired(lambda m=mode: call(m), lambda: torch.mm(qc, kc.T), warmup=2, repeats=12)
    f0 = faults()
    for _ in range(5):
        call(mode)
    paired = statistics.median(t / f for t, f in zip(times, floor, strict=True))
    ms = 1e3 * statistics.median(times)
    print(f"{mode:13s} {ms:6.1f} ms  paired {paired:.3f}  faults/call {(faults() - f0) / 5:.0f}")
