"""The soft backward's two gradient GEMMs at cpu-5b into [N, D] rows (as before session 17) or [D, N] rows
(transposed), each with its copy into a [H, N, d] gradient, against the forward's q @ k^T; plus the copies alone.

Usage: OMP_NUM_THREADS=2 python docs/runs/transposed_grads/gemms.py
"""
import statistics
import time

import torch

torch.manual_seed(0)
n, heads, d = 1320, 48, 64
dim = heads * d
q, k, s = torch.randn(n, dim), torch.randn(n, dim), torch.randn(n, n)
out_nd, out_dn, scores = torch.empty(n, dim), torch.empty(dim, n), torch.empty(n, n)
grad = torch.empty(heads, n, d)


def relaid(src_nd=None, src_dn=None):
    if src_nd is not None:
        grad.copy_(src_nd.view(n, heads, d).permute(1, 0, 2))
    else:
        grad.copy_(src_dn.view(heads, d, n).transpose(1, 2))


calls = {
    "q @ k^T (the forward)": lambda: torch.mm(q, k.T, out=scores),
    "dq = dz @ k, rows": lambda: (torch.mm(s, k, out=out_nd), relaid(src_nd=out_nd)),
    "dq^T = k^T @ dz^T": lambda: (torch.mm(k.T, s.T, out=out_dn), relaid(src_dn=out_dn)),
    "dk = dz^T @ q, rows": lambda: (torch.mm(s.T, q, out=out_nd), relaid(src_nd=out_nd)),
    "dk^T = q^T @ dz": lambda: (torch.mm(q.T, s, out=out_dn), relaid(src_dn=out_dn)),
    "copy [N, D] -> [H, N, d]": lambda: relaid(src_nd=out_nd),
    "copy [D, N] -> [H, N, d]": lambda: relaid(src_dn=out_dn),
}
ts = {name: [] for name in calls}
for fn in calls.values():
    fn()
for _ in range(12):
    for name, fn in calls.items():
        t0 = time.perf_counter()
        fn()
        ts[name].append(time.perf_counter() - t0)
base = ts["q @ k^T (the forward)"]
for name, v in ts.items():
    paired = statistics.median(x / y for x, y in zip(v, base, strict=True))
    print(f"{name:26s} {1e3 * statistics.median(v):7.2f} ms  {paired:.3f}x of the forward GEMM (paired)")
