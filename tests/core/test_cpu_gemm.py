"""The float32 GEMMs of the CPU kernel on MKL or on oneDNN (csrc/amf_cpu_gemm.h): the knob decides, and both
routes give the float64 kernel's answer on ragged shapes, for every output layout the kernel writes: score tiles,
kept scores (rows of a wider matrix), row-major and transposed gradients, one backward row chunk or many (dK
summed with beta = 1)."""

from pathlib import Path

import pytest
import torch

from ditflow_fast import _native

_WHY = _native.why_unavailable()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"cpu backend unavailable: {_WHY}")

SHAPES = [(1, 2, 1, 7, 3), (2, 3, 3, 11, 64), (1, 2, 9, 29, 129)]  # (batch, frames, height, width, D)
ALPHA = 0.3


def _avx512_for_onednn() -> bool:
    """The units ATen's oneDNN matmul asks of an x86 CPU for float32."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = next((line.split() for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), []) \
        if cpuinfo.exists() else []
    return {"avx512bw", "avx512vl", "avx512dq"} <= set(flags) and torch.backends.mkldnn.is_available()


def test_the_knob_decides_the_float32_gemm(monkeypatch):
    ops = _native.ops()
    monkeypatch.setenv("DITFLOW_FAST_CPU_ONEDNN", "0")
    assert ops.onednn_gemm_enabled() is False
    monkeypatch.setenv("DITFLOW_FAST_CPU_ONEDNN", "1")
    assert ops.onednn_gemm_enabled() is _avx512_for_onednn()
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    assert ops.onednn_gemm_enabled() is False


@pytest.fixture(params=["mkl", "onednn"])
def route(request, monkeypatch):
    monkeypatch.setenv("DITFLOW_FAST_CPU_ONEDNN", "1" if request.param == "onednn" else "0")
    if request.param == "onednn" and not _native.ops().onednn_gemm_enabled():
        pytest.skip("this CPU or torch has no oneDNN float32 matmul for the kernel")
    return request.param


def _inputs(shape, seed):
    b, f, h, w, d = shape
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, f * h * w, d, generator=gen, dtype=torch.float64) for _ in range(2))
    return q, k, (f, h, w)


def _close(got, want, tol=2e-5):
    err = (got.double() - want).norm() / want.norm().clamp_min(1e-30)
    assert err < tol, f"relative error {err:.2e}"


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_tiles_and_kept_scores_give_the_float64_answer(shape, route):
    ops = _native.ops()
    q, k, fhw = _inputs(shape, seed=3)
    want_t, want_lse, want_s = ops.amf_forward_scores(q, k, *fhw, ALPHA)
    t, lse = ops.amf_forward(q.float(), k.float(), *fhw, ALPHA, True)
    kt, klse, ks = ops.amf_forward_scores(q.float(), k.float(), *fhw, ALPHA)
    for got, want in [(t, want_t), (lse, want_lse), (kt, want_t), (klse, want_lse), (ks, want_s)]:
        _close(got, want)


@pytest.mark.parametrize("rows", [None, "7"])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_gradients_give_the_float64_answer(shape, keep, transposed, rows, route, monkeypatch):
    if rows:
        monkeypatch.setenv("DITFLOW_FAST_CPU_BWD_ROWS", rows)  # many row chunks: dK summed over them
    ops = _native.ops()
    q, k, fhw = _inputs(shape, seed=5)
    target, lse, scores = ops.amf_forward_scores(q, k, *fhw, ALPHA)
    g = torch.randn(target.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    want = ops.amf_backward(q, k, target, lse, g, *fhw, ALPHA, True, True, scores, False)
    q32, k32 = q.float(), k.float()
    t32, lse32, s32 = ops.amf_forward_scores(q32, k32, *fhw, ALPHA)
    got = ops.amf_backward(q32, k32, t32, lse32, g.float(), *fhw, ALPHA, True, True, s32 if keep else None,
                           transposed)
    for a, b in zip(got, want, strict=True):
        _close(a, b)
