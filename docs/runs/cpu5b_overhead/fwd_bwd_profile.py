"""Where the `cpu` soft forward + backward spends its time at cpu-5b (float32): torch.profiler over 5 calls.

Usage: OMP_NUM_THREADS=2 python fwd_bwd_profile.py
"""
import torch

import ditflow_fast as df

torch.manual_seed(0)
b, heads, d, frames, h, w, text = 1, 48, 64, 4, 15, 22, 226
n = frames * h * w
q0, k0 = torch.randn(b, heads, text + n, d), torch.randn(b, heads, text + n, d)
g = torch.randn(b, frames, frames, h * w, 2)


def fwd_bwd():
    q, k = q0.detach().requires_grad_(), k0.detach().requires_grad_()
    out = df.compute_amf(q, k, frames=frames, height=h, width=w, text_tokens=text, backend="cpu")
    return torch.autograd.grad(out, (q, k), g)


for _ in range(3):
    fwd_bwd()
with torch.profiler.profile() as prof:
    for _ in range(5):
        fwd_bwd()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
