"""The bf16 x bf16 -> float32 score tiles of the CPU kernel (csrc/amf_cpu_bf16.cpp) on bf16 inputs.

A product of two bf16 values is exact in float32, so the tiles must meet the float32 accumulation
bound against float64 scores of the same values, on shapes that cut the kernel's blocking raggedly:
head sizes that are odd or cross its 256-pair K blocks, frames that are not whole 32-key panels or
span several 256-key chunks, query tiles that are not whole 12-row panels, several batch elements
and key-frame groups. Each test runs with the tiles on and off (``DITFLOW_FAST_CPU_BF16``, read per
call); where this CPU has no AVX512-BF16 the "bf16" runs are skipped, which the report shows.
"""

import pytest
import torch
from _amf_helpers import assert_argmax_agrees, make_qk, rel_err

from ditflow_fast import _native
from ditflow_fast._problem import validate
from ditflow_fast.backends.cpu import amf_cpu
from ditflow_fast.backends.reference import amf_reference

_WHY = _native.why_unavailable()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"cpu backend unavailable: {_WHY}")

# (batch, frames, height, width, D): D = 1 and odd D, D across the 512-value K block (515, 1030),
# frames of 1, 7, 31, 33 and 261 keys (the 32-key panels and the 256-key chunks, ragged).
OP_SHAPES = [(1, 2, 1, 1, 1), (2, 3, 1, 7, 3), (1, 2, 1, 31, 515), (2, 3, 3, 11, 64), (1, 2, 9, 29, 1030)]


@pytest.fixture(params=["bf16", "float32"])
def path(request, monkeypatch):
    monkeypatch.setenv("DITFLOW_FAST_CPU_BF16", "1" if request.param == "bf16" else "0")
    if request.param == "bf16" and not _native.ops().bf16_gemm_enabled():
        pytest.skip("this CPU has no AVX512-BF16: bf16 inputs are upcast to float32")
    return request.param


def _qk(b, n, d, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, n, d, generator=gen).bfloat16() for _ in range(2))


def test_the_knob_turns_the_tiles_off(monkeypatch):
    monkeypatch.setenv("DITFLOW_FAST_CPU_BF16", "0")
    assert _native.ops().bf16_gemm_enabled() is False


@pytest.mark.parametrize("rows", ["5", "768"])
@pytest.mark.parametrize("shape", OP_SHAPES)
def test_scores_meet_the_float32_accumulation_bound(path, shape, rows, monkeypatch):
    monkeypatch.setenv("DITFLOW_FAST_CPU_ROWS", rows)  # 5: many ragged query tiles
    b, f, h, w, d = shape
    q, k = _qk(b, f * h * w, d, seed=d + h)
    _, _, s = _native.ops().amf_forward_scores(q, k, f, h, w, 0.5)
    assert s.dtype == torch.float32
    exact = q.double() @ k.double().transpose(1, 2)
    gamma = (d + 8) * 2.0**-24  # float32 sums of d exact products in any order, with slack
    bound = gamma * (q.double().abs() @ k.double().abs().transpose(1, 2))
    assert bool(((s.double() - exact).abs() <= bound).all())


@pytest.mark.parametrize("shape", OP_SHAPES)
def test_soft_and_argmax_match_float64_on_the_same_values(path, shape, monkeypatch):
    monkeypatch.setenv("DITFLOW_FAST_CPU_TILE_KB", "8")  # several key-frame groups per row tile
    b, f, h, w, d = shape
    q, k = _qk(b, f * h * w, d, seed=3 * d + w)
    ops = _native.ops()
    target, lse = ops.amf_forward(q, k, f, h, w, 0.05, True)
    t64, l64 = ops.amf_forward(q.double(), k.double(), f, h, w, 0.05, True)
    assert target.dtype == lse.dtype == torch.float32
    assert torch.allclose(target.double(), t64, atol=1e-4, rtol=0)
    assert torch.allclose(lse.double(), l64, atol=1e-4, rtol=1e-6)
    arg, _ = ops.amf_forward(q, k, f, h, w, 1.0, False)
    s = (q.double() @ k.double().transpose(1, 2)).view(b, -1, f, h * w)
    chosen = (arg[..., 1] * w + arg[..., 0]).long()  # key index within each frame
    picked = s.gather(-1, chosen.unsqueeze(-1)).squeeze(-1)
    assert bool((s.amax(-1) - picked <= 1e-4 * s.abs().amax(-1).clamp_min(1)).all())


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_compute_amf_on_bf16_inputs_with_gradients(path, layout):
    # CogVideoX-like heads (awkward grid, text prefix): the forward against the float64 reference of the
    # same bf16 values; the backward (bf16 GEMMs with the tiles, float32 ones without) to about twice the
    # bf16 rounding of its output (tests/core/test_cpu_bf16_backward.py has the bf16 backward on its own).
    b, heads, f, h, w, d, text = 2, 3, 3, 5, 7, 40, 6
    q, k = make_qk(b, heads, f, h, w, d, text, dtype=torch.bfloat16, layout=layout, seed=17)
    q, k = q.detach().requires_grad_(), k.detach().requires_grad_()
    kw = dict(frames=f, height=h, width=w, temperature=2.0, text_tokens=text)
    out = amf_cpu(validate(q, k, mode="soft", **kw))
    ref = amf_reference(q, k, mode="soft", **kw)
    assert out.dtype == torch.float32 and rel_err(out, ref) < 1e-5
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    dq, dk = torch.autograd.grad((out * g.float()).sum(), (q, k))
    rq, rk = torch.autograd.grad((ref * g).sum(), (q, k))
    assert dq.dtype == torch.bfloat16 and rel_err(dq, rq) < 5e-3 and rel_err(dk, rk) < 5e-3
    arg = amf_cpu(validate(q.detach(), k.detach(), mode="argmax", **kw))
    assert_argmax_agrees(arg, q.detach(), k.detach(), f, h, w, text)
