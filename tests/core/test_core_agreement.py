"""Torch backend and public API against the float64 oracle, per docs/amf.md "Agreement"."""

import pytest
import torch
from _amf_helpers import SOFT_RTOL, assert_argmax_agrees, make_qk, rel_err

from ditflow_fast import compute_amf
from ditflow_fast._problem import validate
from ditflow_fast.backends.reference import amf_reference
from ditflow_fast.backends.torch_chunked import amf_torch

# (batch, heads, frames, height, width, head_dim, text_tokens, layout)
SHAPES = [
    (1, 2, 1, 5, 7, 8, 0, "contiguous"),  # F = 1
    (1, 3, 3, 1, 13, 4, 7, "transposed"),  # prime h*w, odd text prefix
    (3, 2, 2, 3, 5, 16, 226, "strided"),  # batch 3, h != w, CogVideoX's prefix
    (2, 4, 4, 4, 3, 8, 1, "contiguous"),
]


def _amf(q, k, shape, mode, chunk_rows=None, temperature=2.0):
    _, _, f, h, w, _, text, _ = shape
    p = validate(q, k, frames=f, height=h, width=w, temperature=temperature, mode=mode, text_tokens=text)
    return amf_torch(p, chunk_rows=chunk_rows)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("chunk_rows", [None, 7])
def test_soft_matches_float64_reference(shape, dtype, chunk_rows):
    b, heads, f, h, w, d, text, layout = shape
    q, k = make_qk(b, heads, f, h, w, d, text, dtype=dtype, layout=layout, seed=SHAPES.index(shape), scale=2.0)
    out = _amf(q, k, shape, "soft", chunk_rows)
    ref = amf_reference(q, k, frames=f, height=h, width=w, text_tokens=text)
    assert out.dtype == torch.float32 and out.shape == (b, f, f, h * w, 2)
    assert rel_err(out, ref) < SOFT_RTOL[dtype]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_rows", [None, 13])
def test_argmax_agrees_with_float64_scores(shape, dtype, chunk_rows):
    b, heads, f, h, w, d, text, layout = shape
    q, k = make_qk(b, heads, f, h, w, d, text, dtype=dtype, layout=layout, seed=100 + SHAPES.index(shape))
    out = _amf(q, k, shape, "argmax", chunk_rows)
    assert_argmax_agrees(out, q, k, f, h, w, text)


def test_public_api_auto_matches_reference_backend():
    q, k = make_qk(2, 3, 3, 4, 5, 8, 11, layout="transposed", seed=5)
    kw = dict(frames=3, height=4, width=5, text_tokens=11)
    for mode in ("soft", "argmax"):
        fast = compute_amf(q, k, mode=mode, **kw)
        ref = compute_amf(q, k, mode=mode, backend="reference", **kw)
        assert rel_err(fast, ref) < 1e-5


def test_three_dim_input_gives_unbatched_output():
    q, k = make_qk(1, 2, 2, 3, 4, 8, 3, seed=2)
    out3 = compute_amf(q[0], k[0], frames=2, height=3, width=4, text_tokens=3)
    out4 = compute_amf(q, k, frames=2, height=3, width=4, text_tokens=3)
    assert out3.shape == (2, 2, 12, 2)
    assert torch.equal(out3, out4[0])


def test_float64_in_float64_out():
    q, k = make_qk(1, 2, 2, 3, 3, 4, dtype=torch.float64, seed=3)
    out = compute_amf(q, k, frames=2, height=3, width=3)
    assert out.dtype == torch.float64
    assert rel_err(out, amf_reference(q, k, frames=2, height=3, width=3)) < 1e-12


def test_temperature_changes_soft_but_not_argmax():
    q, k = make_qk(1, 2, 2, 3, 4, 8, seed=4, scale=2.0)
    kw = dict(frames=2, height=3, width=4)
    soft1, soft5 = (compute_amf(q, k, temperature=t, **kw) for t in (1.0, 5.0))
    assert rel_err(soft1, soft5) > 1e-3
    ref5 = amf_reference(q, k, temperature=5.0, **kw)
    assert rel_err(soft5, ref5) < 1e-5
    arg1, arg5 = (compute_amf(q, k, temperature=t, mode="argmax", **kw) for t in (1.0, 5.0))
    assert torch.equal(arg1, arg5)


def test_same_frame_diagonal_of_self_similarity_is_zero():
    # q = k with distinct random features: every token's best match in its own frame is itself.
    q, _ = make_qk(1, 4, 3, 5, 6, 32, seed=6)
    out = compute_amf(q, q, frames=3, height=5, width=6, mode="argmax")
    for i in range(3):
        assert torch.equal(out[0, i, i], torch.zeros_like(out[0, i, i]))
