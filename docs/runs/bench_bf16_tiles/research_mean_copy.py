"""Peak extra RSS of the research procedure's steps on the CPU, in units of one [H, N, N] tensor (fresh process).

Usage: python research_mean_copy.py float32|bfloat16 mm|div|mean
"""
import resource
import sys

import torch

heads, n, d = 48, 1320, 64
dtype, step = getattr(torch, sys.argv[1]), sys.argv[2]
q, k = torch.randn(heads, n, d).to(dtype), torch.randn(heads, n, d).to(dtype)
scale = torch.sqrt(torch.tensor(d, dtype=dtype))
torch.mm(q[0], k[0].T)  # load the GEMM libraries before the baseline
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if step == "mm":
    x = q @ k.transpose(-1, -2)
elif step == "div":
    x = (q @ k.transpose(-1, -2)) / scale
else:
    x = ((q @ k.transpose(-1, -2)) / scale).mean(dim=0)
extra_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
unit = heads * n * n * torch.finfo(dtype).bits / 8
print(sys.argv[1], step, f"extra MB {extra_kb / 1024:.0f}", f" in units of H*N^2*elem: {extra_kb * 1024 / unit:.2f}")
