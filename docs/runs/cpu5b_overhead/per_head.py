"""One 192 x 330 score tile, one thread: the heads-concatenated GEMM against 48 accumulated per-head GEMMs
(what reading [B, H, T, d] without the concatenation copy would take).

Usage: python per_head.py
"""
import statistics

import torch

from ditflow_fast.bench.timing import time_callable

torch.set_num_threads(1)
torch.manual_seed(0)
heads, d, rows, keys = 48, 64, 192, 330
q, k = torch.randn(heads, rows, d), torch.randn(heads, keys, d)
qc = q.permute(1, 0, 2).reshape(rows, -1).contiguous()
kc = k.permute(1, 0, 2).reshape(keys, -1).contiguous()
s = torch.empty(rows, keys)


def per_head():
    torch.mm(q[0], k[0].T, out=s)
    for i in range(1, heads):
        s.addmm_(q[i], k[i].T)


def median_us(fn, repeats=21):
    return round(1e6 * statistics.median(time_callable(fn, warmup=0, repeats=repeats)))


for _ in range(2):
    print("concat mm us", median_us(lambda: torch.mm(qc, kc.T, out=s)), "per-head", median_us(per_head))
