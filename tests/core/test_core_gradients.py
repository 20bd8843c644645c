"""Soft-mode gradients of the torch backend against float64 autograd of the reference."""

import pytest
import torch
from _amf_helpers import SOFT_RTOL, make_qk, rel_err

from ditflow_fast import compute_amf
from ditflow_fast._problem import validate
from ditflow_fast.backends.reference import amf_reference
from ditflow_fast.backends.torch_chunked import amf_torch

# (batch, heads, frames, height, width, head_dim, text_tokens, layout, chunk_rows)
CASES = [
    (1, 2, 1, 3, 5, 8, 0, "contiguous", None),
    (2, 3, 3, 1, 7, 4, 5, "transposed", 4),
    (3, 2, 2, 3, 4, 8, 226, "strided", 5),
]


def _grads(fn, q, k, g):
    q = q.detach().requires_grad_()
    k = k.detach().requires_grad_()
    out = fn(q, k)
    dq, dk = torch.autograd.grad((out * g).sum(), (q, k))
    return dq, dk


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_match_float64_reference(case, dtype):
    b, heads, f, h, w, d, text, layout, rows = case
    q, k = make_qk(b, heads, f, h, w, d, text, dtype=dtype, layout=layout, seed=CASES.index(case), scale=1.5)
    g = torch.randn(b, f, f, h * w, 2, generator=torch.Generator().manual_seed(9))

    def fast(q_, k_):
        p = validate(q_, k_, frames=f, height=h, width=w, temperature=2.0, mode="soft", text_tokens=text)
        return amf_torch(p, chunk_rows=rows)

    def ref(q_, k_):
        return amf_reference(q_, k_, frames=f, height=h, width=w, text_tokens=text)

    dq, dk = _grads(fast, q, k, g)
    rq, rk = _grads(ref, q.double(), k.double(), g.double())
    assert dq.dtype == dtype and dq.shape == q.shape
    assert rel_err(dq, rq) < SOFT_RTOL[dtype]
    assert rel_err(dk, rk) < SOFT_RTOL[dtype]
    if text:
        assert not dq[:, :, :text].any() and not dk[:, :, :text].any()


def test_gradcheck_float64_tiny():
    q, k = make_qk(2, 2, 2, 2, 3, 3, 1, dtype=torch.float64, layout="transposed", seed=11)
    q.requires_grad_()
    k.requires_grad_()

    def fn(q_, k_):
        p = validate(q_, k_, frames=2, height=2, width=3, temperature=2.0, mode="soft", text_tokens=1)
        return amf_torch(p, chunk_rows=5)

    assert torch.autograd.gradcheck(fn, (q, k))


def test_gradient_only_for_inputs_that_require_it():
    q, k = make_qk(1, 2, 2, 3, 3, 4, seed=12)
    q.requires_grad_()
    out = compute_amf(q, k, frames=2, height=3, width=3)
    (dq,) = torch.autograd.grad(out.square().sum(), (q,))
    assert dq.shape == q.shape and k.grad is None


def test_argmax_output_carries_no_gradient():
    q, k = make_qk(1, 2, 2, 3, 3, 4, seed=13)
    q.requires_grad_()
    out = compute_amf(q, k, frames=2, height=3, width=3, mode="argmax")
    assert not out.requires_grad
