"""The ``cpu`` backend's heads concatenation fused with the value checks (``csrc/amf_cpu_gather.h``).

``gather_checked`` copies q's or k's video tokens into ``[B, N, H*d]`` and returns ``max|t|`` over all of t, NaN
when t holds NaN or inf anywhere (text tokens included): checked against ATen's copy and ``aminmax`` on awkward
shapes and layouts, and through ``compute_amf``, whose errors must not change.
"""

import math

import pytest
import torch
from _amf_helpers import make_qk

import ditflow_fast.backends.cpu as cpu_backend
import ditflow_fast.eager as eager
from ditflow_fast import _native, compute_amf

_WHY = _native.why_unavailable()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"cpu backend unavailable: {_WHY}")

# (batch, heads, tokens, head_dim, text): token counts that split the 32-row blocks across batch elements,
# text tokens none, fewer than a block, more than a block, and all of them
SHAPES = [(1, 48, 70, 64, 7), (3, 5, 45, 7, 0), (2, 3, 41, 16, 33), (2, 2, 9, 5, 9), (1, 1, 1, 1, 0)]


def _layouts(t: torch.Tensor) -> dict[str, torch.Tensor]:
    b, h, n, d = t.shape
    wide = torch.zeros(b, h, n, 2 * d, dtype=t.dtype)
    wide[..., ::2] = t
    return {"bhtd": t, "bthd": t.transpose(1, 2).contiguous().transpose(1, 2), "strided_d": wide[..., ::2]}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_gather_checked_is_the_copy_and_the_maximum(shape, dtype, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        b, h, n, d, text = shape
        base = torch.randn(b, h, n, d, dtype=dtype)
        base.view(-1)[torch.randint(base.numel(), (1,))] = -7.5  # the largest magnitude is negative
        for name, t in _layouts(base).items():
            out, m = _native.ops().gather_checked(t, text, 0)
            want = t[:, :, text:].permute(0, 2, 1, 3).reshape(b, n - text, h * d)
            assert out.dtype == dtype and torch.equal(out, want), name
            assert m == 7.5, name
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", ["text", "video", "last"])
def test_a_non_finite_value_anywhere_gives_nan(bad, where):
    b, h, n, d, text = 2, 3, 41, 16, 33
    for name, t in _layouts(torch.randn(b, h, n, d)).items():
        t = t.clone() if name != "strided_d" else t
        index = {"text": (1, 2, 5, 3), "video": (0, 1, 35, 15), "last": (1, 2, 40, 15)}[where]
        t[index] = bad
        assert math.isnan(_native.ops().gather_checked(t, text, 1)[1]), name


def test_gather_checked_refuses_what_it_does_not_take():
    ops = _native.ops()
    with pytest.raises(RuntimeError, match="slot must be 0"):
        ops.gather_checked(torch.randn(1, 2, 3, 4), 0, 5)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        ops.gather_checked(torch.randn(1, 2, 3, 4).bfloat16(), 0, 0)
    with pytest.raises(RuntimeError, match="text_tokens must be in"):
        ops.gather_checked(torch.randn(1, 2, 3, 4), 4, 0)


def _no_second_pass(monkeypatch):
    """Make the separate value checks fail loudly: the fused path must not need them."""
    def fail(problem):
        raise AssertionError("check_values ran although gather_checked found the maxima")
    monkeypatch.setattr(eager, "check_values", fail)
    monkeypatch.setattr(cpu_backend, "check_values", fail)


@pytest.mark.parametrize("mode", ["soft", "argmax"])
@pytest.mark.parametrize("which", ["q", "k"])
def test_compute_amf_names_the_non_finite_argument_from_the_fused_pass(monkeypatch, which, mode):
    _no_second_pass(monkeypatch)
    q, k = make_qk(1, 2, 2, 3, 4, 8, text_tokens=5, seed=1)
    (q if which == "q" else k)[0, 1, 2, 3] = math.inf  # a text token: not in the copy, still checked
    with pytest.raises(ValueError, match=f"^{which} contains NaN or inf"):
        compute_amf(q, k, frames=2, height=3, width=4, text_tokens=5, mode=mode, backend="cpu")


def test_compute_amf_refuses_out_of_range_input_from_the_fused_pass(monkeypatch):
    _no_second_pass(monkeypatch)
    q, k = make_qk(1, 2, 2, 3, 4, 8, text_tokens=5, seed=2)
    q[0, 0, 7, 1] = 1e37
    with pytest.raises(ValueError, match="too large for float32 scores"):
        compute_amf(q, k, frames=2, height=3, width=4, text_tokens=5, backend="cpu")


@pytest.mark.parametrize("text", [0, 3])
def test_layouts_without_a_copy_still_get_checked(text, monkeypatch):
    # [B, T, H, d] inputs of one batch element are handed to the kernel as views: the separate checks run
    q, k = make_qk(1, 2, 2, 3, 4, 8, text_tokens=text, layout="transposed", seed=3)
    k[0, 1, 1, 2] = math.nan  # a text token where there are some
    with pytest.raises(ValueError, match="^k contains NaN or inf"):
        compute_amf(q, k, frames=2, height=3, width=4, text_tokens=text, backend="cpu")
    k[0, 1, 1, 2] = 0.0
    calls = []
    real = _native.ops

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(real(), name)

    monkeypatch.setattr(cpu_backend._native, "ops", Spy)
    compute_amf(q, k, frames=2, height=3, width=4, text_tokens=text, backend="cpu")
    assert "gather_checked" not in calls and "scratch" not in calls  # no copy was made
