"""The two gradient GEMMs of one backward row chunk (the 64 MiB rule) into [N, D] rows or [D, N] (transposed), at
N video tokens of 48 x 64 heads: the ratio transposed / rows for dq and for dk, medians of 9 interleaved calls.

Usage: OMP_NUM_THREADS=2 python docs/runs/transposed_grads/sizes.py N [N ...]
"""
import statistics
import sys
import time

import torch

D = 3072


def ratios(n: int) -> tuple[int, float, float]:
    r = min(n, (64 << 20) // (n * 4))
    q, k, s = torch.randn(n, D), torch.randn(n, D), torch.randn(r, n)
    dq, dq_t, dk, dk_t = torch.empty(n, D), torch.empty(D, n), torch.empty(n, D), torch.empty(D, n)
    calls = {"dq": lambda: dq[:r].addmm_(s, k, beta=0, alpha=1),
             "dq_t": lambda: dq_t[:, :r].addmm_(k.T, s.T, beta=0, alpha=1),
             "dk": lambda: dk.addmm_(s.T, q[:r], beta=1, alpha=1),
             "dk_t": lambda: dk_t.addmm_(q[:r].T, s, beta=1, alpha=1)}
    ts = {name: [] for name in calls}
    for fn in calls.values():
        fn()
    for _ in range(9):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            ts[name].append(time.perf_counter() - t0)
    m = {name: statistics.median(v) for name, v in ts.items()}
    return r, m["dq_t"] / m["dq"], m["dk_t"] / m["dk"]


for n in map(int, sys.argv[1:]):
    rows, dq_ratio, dk_ratio = ratios(n)
    print(f"N {n} rows per chunk {rows}: dq transposed / rows {dq_ratio:.3f}, dk {dk_ratio:.3f}", flush=True)
