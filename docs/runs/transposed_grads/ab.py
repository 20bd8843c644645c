"""The cpu backend's soft forward + backward at cpu-5b with the gradients written as [B, D, N] (transposed, the
default for [B, H, T, d] inputs of at most 2,048 video tokens since session 17) or as [B, N, D], in one process,
interleaved, each call paired with the GEMM q @ k^T timed just before it. Above the size limit both arms run
the same code.

Usage: OMP_NUM_THREADS=2 python docs/runs/transposed_grads/ab.py [ROUNDS [PRESET]]
"""
import statistics
import sys
import time

import torch

from ditflow_fast import compute_amf
from ditflow_fast.backends import cpu
from ditflow_fast.bench.presets import get_preset

g = get_preset(sys.argv[2] if len(sys.argv) > 2 else "cpu-5b").geometry
gen = torch.Generator().manual_seed(0)
q = torch.randn(1, g.heads, g.text_tokens + g.tokens, g.head_dim, generator=gen, requires_grad=True)
k = torch.randn(1, g.heads, g.text_tokens + g.tokens, g.head_dim, generator=gen, requires_grad=True)
kw = dict(frames=g.frames, height=g.height, width=g.width, text_tokens=g.text_tokens, backend="cpu")
qc = q.detach()[0, :, g.text_tokens:].transpose(0, 1).reshape(g.tokens, -1).contiguous()
kc = k.detach()[0, :, g.text_tokens:].transpose(0, 1).reshape(g.tokens, -1).contiguous()
scores = torch.empty(g.tokens, g.tokens)
head_major = cpu.grad_is_head_major


def fwd_bwd(transposed: bool) -> float:
    cpu.grad_is_head_major = head_major if transposed else (lambda like: False)
    q.grad = k.grad = None
    t0 = time.perf_counter()
    compute_amf(q, k, **kw).sum().backward()
    return time.perf_counter() - t0


def gemm() -> float:
    t0 = time.perf_counter()
    torch.mm(qc, kc.T, out=scores)
    return time.perf_counter() - t0


grads = {}
for arm in (False, True):
    fwd_bwd(arm)
    grads[arm] = (q.grad.clone(), k.grad.clone())
for a, b in zip(grads[False], grads[True], strict=True):  # summed in another order: equal up to rounding
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(a.abs().max()))
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
ratios = {False: [], True: []}
times = {False: [], True: []}
for _ in range(rounds):
    for arm in (False, True):
        base = gemm()
        t = fwd_bwd(arm)
        ratios[arm].append(t / base)
        times[arm].append(t)
for arm, name in ((False, "[B, N, D] gradients"), (True, "[B, D, N] gradients")):
    print(f"{name}: median {1e3 * statistics.median(times[arm]):.1f} ms, "
          f"{statistics.median(ratios[arm]):.3f}x of the GEMM (paired)")
print(f"transposed / not, medians: {statistics.median(times[True]) / statistics.median(times[False]):.3f}; "
      f"per round: {statistics.median(a / b for a, b in zip(times[True], times[False], strict=True)):.3f}")
