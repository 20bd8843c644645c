"""The bf16 backward's two GEMMs at cpu-5b's shape against the forward's, ATen bf16 (bf16 out), medians of 11 in ms.

Usage: OMP_NUM_THREADS=2 python bwd_gemms.py (output in bwd_gemms.txt)
"""
import time

import torch

N, D = 1320, 3072
torch.manual_seed(0)
dz, k, q = torch.randn(N, N).bfloat16(), torch.randn(N, D).bfloat16(), torch.randn(N, D).bfloat16()


def ms(f, repeats=11):
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[repeats // 2]


print(f"q @ k^T {ms(lambda: q @ k.T):.1f}, dz @ k {ms(lambda: dz @ k):.1f}, dz^T @ q {ms(lambda: dz.T @ q):.1f}")
