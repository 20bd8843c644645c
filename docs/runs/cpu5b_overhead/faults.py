"""Minor page faults and time per compute_amf call at cpu-5b, the GEMM floor interleaved (float32).

Usage: OMP_NUM_THREADS=2 python faults.py cpu|torch grad|nograd
"""
import resource
import statistics
import sys
import time

import torch

import ditflow_fast as df

torch.manual_seed(0)
b, heads, d, frames, h, w, text = 1, 48, 64, 4, 15, 22, 226
n = frames * h * w
backend, grad = sys.argv[1], sys.argv[2] == "grad"
q = torch.randn(b, heads, text + n, d, requires_grad=grad)
k = torch.randn(b, heads, text + n, d, requires_grad=grad)
g = torch.randn(b, frames, frames, h * w, 2)
qc = q.detach()[0, :, text:].permute(1, 0, 2).reshape(n, -1).contiguous()
kc = k.detach()[0, :, text:].permute(1, 0, 2).reshape(n, -1).contiguous()


def call():
    out = df.compute_amf(q, k, frames=frames, height=h, width=w, text_tokens=text, mode="soft", backend=backend)
    if grad:
        torch.autograd.grad(out, (q, k), g)


def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


times, calls_faults, gemm_faults = [], [], []
for _ in range(10):
    f0 = faults()
    torch.mm(qc, kc.T)
    f1 = faults()
    t0 = time.perf_counter()
    call()
    times.append(time.perf_counter() - t0)
    gemm_faults.append(f1 - f0)
    calls_faults.append(faults() - f1)
print(backend, "grad" if grad else "nograd", "ms", round(1e3 * statistics.median(times[2:]), 1),
      "faults/call", calls_faults[2:], "gemm faults", gemm_faults[2:])
