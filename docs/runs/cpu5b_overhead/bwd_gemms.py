"""The soft backward's two GEMM shapes at cpu-5b against the forward's q @ k^T (float32, ratios of medians).

dq = dz @ k and dk = dz^T @ q multiply over N = 1,320 instead of D = 3,072. Usage: OMP_NUM_THREADS=2 python bwd_gemms.py
"""
import statistics

import torch

from ditflow_fast.bench.timing import time_callable

n, dim = 1320, 3072
q, k, s = torch.randn(n, dim), torch.randn(n, dim), torch.randn(n, n)
out, scores, out_t = torch.empty(n, dim), torch.empty(n, n), torch.empty(dim, n)
calls = {
    "q @ k^T (the forward)": lambda: torch.mm(q, k.T, out=scores),
    "dz @ k (dq)": lambda: torch.mm(s, k, out=out),
    "dz^T @ q (dk)": lambda: torch.mm(s.T, q, out=out),
    "q^T @ dz (dk transposed)": lambda: torch.mm(q.T, s, out=out_t),
}
ms = {name: 1e3 * statistics.median(time_callable(fn, warmup=2, repeats=12)) for name, fn in calls.items()}
base = ms["q @ k^T (the forward)"]
for name, t in ms.items():
    print(f"{name:26s} {t:6.1f} ms  {t / base:.3f}x")
