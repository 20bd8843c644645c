"""``amf_backward(..., transposed=True)``: float32/float64 gradients as ``[B, N, D]`` views of ``[B, D, N]`` buffers
(csrc/amf_cpu.cpp), equal to the row-major ones up to float32 rounding, on ragged shapes, with the scores kept or
recomputed, in one row chunk or many; the fake kernel gives the same strides; bf16 inputs ignore the flag; the backend
asks for them only on CPUs that are not Intel's, with the same gradients either way."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from ditflow_fast import _native, compute_amf

_WHY = _native.why_unavailable()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"cpu backend unavailable: {_WHY}")

SHAPES = [(1, 2, 1, 7, 3), (2, 3, 3, 11, 64), (1, 2, 9, 29, 129)]  # (batch, frames, height, width, D)
ALPHA = 0.3


def _args(shape, dtype, keep, seed=0):
    b, f, h, w, d = shape
    ops, gen = _native.ops(), torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, f * h * w, d, generator=gen).to(dtype) for _ in range(2))
    if keep:
        target, lse, scores = ops.amf_forward_scores(q, k, f, h, w, ALPHA)
    else:
        (target, lse), scores = ops.amf_forward(q, k, f, h, w, ALPHA, True), None
    g = torch.randn(target.shape, generator=gen, dtype=target.dtype)
    return q, k, target, lse, g, f, h, w, ALPHA, True, True, scores


@pytest.mark.parametrize("rows", [None, "5"])
@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_transposed_gradients_equal_the_row_major_ones(shape, dtype, keep, rows, monkeypatch):
    if rows:
        monkeypatch.setenv("DITFLOW_FAST_CPU_BWD_ROWS", rows)  # many row chunks: dK summed over them
    args = _args(shape, dtype, keep)
    rows_major = _native.ops().amf_backward(*args)
    transposed = _native.ops().amf_backward(*args, True)
    n, d = args[0].shape[1:]
    for a, t in zip(rows_major, transposed, strict=True):
        assert a.is_contiguous() and t.shape == a.shape and t.stride() == (n * d, 1, n)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(t, a, rtol=tol, atol=tol * float(a.abs().max()))


@pytest.mark.parametrize("transposed", [False, True])
def test_the_fake_kernel_gives_the_real_strides(transposed):
    args = _args(SHAPES[1], torch.float32, keep=False)
    real = _native.ops().amf_backward(*args, transposed)
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = _native.ops().amf_backward(*args, transposed)
    assert [(t.shape, t.stride()) for t in fake] == [(t.shape, t.stride()) for t in real]


def test_bf16_inputs_ignore_the_flag():
    if not _native.ops().bf16_gemm_enabled():
        pytest.skip("this CPU has no AVX512-BF16: bf16 inputs take the float32 backward")
    args = _args(SHAPES[1], torch.bfloat16, keep=False)
    assert all(t.is_contiguous() for t in _native.ops().amf_backward(*args, True))


@pytest.mark.parametrize("intel", [True, False])
def test_the_backend_asks_for_them_only_off_intel_and_gets_the_same_gradients(intel, monkeypatch):
    import ditflow_fast.backends.cpu as cpu

    q, k = (torch.randn(1, 3, 4 + 2 * 15, 8, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    q, k = q.requires_grad_(), k.requires_grad_()
    kw = dict(frames=2, height=3, width=5, text_tokens=4)
    grads_out = torch.randn(1, 2, 2, 15, 2)
    qd, kd = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    want = torch.autograd.grad(compute_amf(qd, kd, backend="reference", **kw), (qd, kd), grads_out.double())
    asked = []
    real = _native.ops

    class Spy:
        def __getattr__(self, name):
            op = getattr(real(), name)
            if name != "amf_backward":
                return op
            return lambda *a: asked.append(a[-1]) or op(*a)

    monkeypatch.setattr(cpu, "_intel_cpu", lambda: intel)
    monkeypatch.setattr(cpu._native, "ops", Spy)
    got = torch.autograd.grad(compute_amf(q, k, backend="cpu", **kw), (q, k), grads_out)
    assert asked == [not intel]
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g.double(), w, rtol=1e-4, atol=1e-6)
