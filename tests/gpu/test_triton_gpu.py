"""The compiled Triton kernels on a CUDA GPU (skipped without one).

Run on a machine with a GPU, in its own pytest process (the interpreter tests set
``TRITON_INTERPRET=1`` for their process, which would turn these into interpreter runs)::

    pytest -m gpu tests/gpu/test_triton_gpu.py -q

Small awkward shapes are checked against the float64 reference; CogVideoX-5B shapes (6 and 13
latent frames; the float64 reference would need tens of GB there) against the chunked torch
backend, which accumulates the same bf16 products in fp32.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/_amf_helpers.py

from _amf_helpers import SOFT_RTOL, assert_argmax_agrees, make_qk, rel_err  # noqa: E402

from ditflow_fast import choose_backend, compute_amf  # noqa: E402
from ditflow_fast._problem import validate  # noqa: E402
from ditflow_fast.backends.reference import amf_reference  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") == "1",
                       reason="TRITON_INTERPRET=1 in this process; run tests/gpu in a pytest process of its own"),
]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (batch, heads, frames, height, width, head_dim, text_tokens, layout): ragged against 64/128 tiles
SMALL = [
    (1, 4, 1, 7, 11, 64, 0, "contiguous"),
    (3, 3, 3, 5, 13, 64, 5, "transposed"),
    (2, 2, 2, 9, 10, 32, 226, "strided"),
]


def _cuda_qk(shape, dtype, seed=0, scale=3.0):
    b, heads, f, h, w, d, text, layout = shape
    q, k = make_qk(b, heads, f, h, w, d, text_tokens=text, dtype=dtype, layout=layout, seed=seed, scale=scale)
    return [_to_cuda_keeping_strides(t) for t in (q, k)]


def _to_cuda_keeping_strides(t):
    # .cuda() would hand back a contiguous copy of a strided view; the kernels must see the strides
    out = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cuda")
    out.copy_(t)
    return out


def _geom(shape):
    _, _, f, h, w, _, text, _ = shape
    return dict(frames=f, height=h, width=w, text_tokens=text)


def test_auto_picks_triton_on_cuda():
    q, k = _cuda_qk(SMALL[0], torch.bfloat16)
    assert choose_backend(q, k, **_geom(SMALL[0])).name == "triton"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SMALL, ids=lambda s: f"F{s[2]}-{s[3]}x{s[4]}-t{s[6]}-{s[7]}")
def test_forward_agrees(shape, dtype):
    q, k = _cuda_qk(shape, dtype, seed=1)
    g = _geom(shape)
    soft = compute_amf(q, k, backend="triton", **g)
    assert rel_err(soft.cpu(), amf_reference(q.cpu(), k.cpu(), **g)) < SOFT_RTOL[dtype]
    hard = compute_amf(q, k, mode="argmax", backend="triton", **g)
    # half inputs: exact products, fp32 sums, so the fp32 score tolerance holds for them too
    assert_argmax_agrees(hard.cpu(), q.cpu(), k.cpu(), g["frames"], g["height"], g["width"], g["text_tokens"])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SMALL[1:], ids=lambda s: f"F{s[2]}-{s[3]}x{s[4]}-t{s[6]}-{s[7]}")
def test_backward_agrees_and_is_deterministic(shape, dtype):
    q, k = _cuda_qk(shape, dtype, seed=2)
    g = _geom(shape)
    q.requires_grad_()
    k.requires_grad_()
    out = compute_amf(q, k, backend="triton", **g)
    up = torch.randn(out.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    dq, dk = torch.autograd.grad(out, (q, k), up)
    dq2, dk2 = torch.autograd.grad(compute_amf(q, k, backend="triton", **g), (q, k), up)
    assert torch.equal(dq, dq2) and torch.equal(dk, dk2)
    qd, kd = q.detach().cpu().double().requires_grad_(), k.detach().cpu().double().requires_grad_()
    rq, rk = torch.autograd.grad(amf_reference(qd, kd, **g), (qd, kd), up.cpu().double())
    assert rel_err(dq.cpu(), rq) < SOFT_RTOL[dtype] and rel_err(dk.cpu(), rk) < SOFT_RTOL[dtype]


def _cogvideox(frames, seed):
    gen = torch.Generator("cuda").manual_seed(seed)
    t = 226 + frames * 30 * 45
    return [torch.randn(1, 48, t, 64, device="cuda", generator=gen).to(torch.bfloat16) for _ in range(2)]


@pytest.mark.parametrize("frames", [6, pytest.param(13, marks=pytest.mark.slow)])
def test_cogvideox_5b_agrees_with_torch_backend_within_bounded_memory(frames):
    from ditflow_fast.backends import triton_launch as tb

    q, k = _cogvideox(frames, seed=4)
    g = dict(frames=frames, height=30, width=45, text_tokens=226)
    want = compute_amf(q, k, backend="torch", **g)
    compute_amf(q, k, backend="triton", **g)  # autotunes first: its trial buffers are not the kernel's memory
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    got = compute_amf(q, k, backend="triton", **g)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    n = frames * 30 * 45
    # output (8 N F) + lse (4 N F) + compute_amf's isfinite mask of q (1 byte per element) + slack:
    # nothing N x N (which would be >= 4 N^2 = 262 MB at 6 frames)
    assert extra <= 12 * n * frames + q.numel() + (4 << 20)
    assert rel_err(got, want) < SOFT_RTOL[torch.bfloat16]
    hard = compute_amf(q, k, mode="argmax", backend="triton", **g)
    ref_hard = compute_amf(q, k, mode="argmax", backend="torch", **g)
    # bf16 products summed in different orders: disagreements only on near-ties, so rare
    assert (hard != ref_hard).any(dim=-1).float().mean() < 1e-3
    p = validate(q, k, temperature=2.0, mode="soft", **g)
    out, lse = tb.forward(p)
    up = torch.randn_like(out)
    tb.backward(p, out, lse, up)  # autotune
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    dq, dk = tb.backward(p, out, lse, up)
    torch.cuda.synchronize()
    # workspace (<= budget) + fp32 dQ/dK staging + the gradients themselves
    bound = tb.DEFAULT_BUDGET_BYTES + 2 * n * 48 * 64 * 4 + 2 * q.numel() * 2 + (64 << 20)
    assert torch.cuda.max_memory_allocated() - base <= bound
    qq, kk = q.clone().requires_grad_(), k.clone().requires_grad_()
    rq, rk = torch.autograd.grad(compute_amf(qq, kk, backend="torch", **g), (qq, kk), up)
    assert rel_err(dq, rq) < SOFT_RTOL[torch.bfloat16] and rel_err(dk, rk) < SOFT_RTOL[torch.bfloat16]
