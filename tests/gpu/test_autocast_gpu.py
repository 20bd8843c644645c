"""The AMF inside CUDA autocast (fp16 for CogVideoX-2B, bf16 for 5B, as the research code runs it).

Every backend that runs on CUDA must give, inside ``torch.autocast("cuda", dtype)``, the result and
the gradients it gives outside it (fp32 accumulation from the inputs' own dtype): the AMF turns
autocast off for its own forward and backward (``ditflow_fast._problem.autocast_disabled``). The
CPU-autocast counterparts, which run everywhere, are in ``tests/core/test_hardening_amf.py``.

Written without a GPU to run them on (no machine of the project had one): run in a pytest process
of its own, as the other GPU tests::

    pytest -m gpu tests/gpu/test_autocast_gpu.py -q
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/_amf_helpers.py

from _amf_helpers import SOFT_RTOL, rel_err  # noqa: E402

from ditflow_fast import amf_loss, compute_amf  # noqa: E402
from ditflow_fast.backends.reference import amf_reference  # noqa: E402
from ditflow_fast.compat import compute_motion_flow  # noqa: E402
from ditflow_fast.dispatch import backends  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") == "1",
                       reason="TRITON_INTERPRET=1 in this process; run tests/gpu in a pytest process of its own"),
]

AUTOCAST_DTYPES = [torch.float16, torch.bfloat16]
GEOM = dict(frames=2, height=5, width=7, text_tokens=226)  # h*w = 35: ragged against the kernels' tiles
SHAPE = (1, 4, 226 + 2 * 35, 64)


def _backend(name, differentiable=True):
    """A pytest param that skips when ``name`` cannot run on CUDA here."""
    entry = backends().get(name)
    why = "not registered" if entry is None else entry.unavailable()
    if entry is not None and not why and "cuda" not in entry.devices:
        why = "does not run on CUDA"
    if entry is not None and not why and differentiable and not entry.differentiable:
        why = "has no backward"
    return pytest.param(name, marks=pytest.mark.skipif(bool(why), reason=f"{name}: {why}"))


FORWARD_BACKENDS = [_backend(n, differentiable=False) for n in ("reference", "torch", "triton", "cuda")]
GRAD_BACKENDS = [_backend(n) for n in ("reference", "torch", "triton")]


def _qk(dtype, seed, shape=SHAPE, scale=2.0):
    gen = torch.Generator("cuda").manual_seed(seed)
    return [(torch.randn(shape, device="cuda", generator=gen) * scale).to(dtype) for _ in range(2)]


def _close(a, b):
    # the same code with autocast off: equal up to cuBLAS/kernel run-to-run reproducibility
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _input_dtypes(backend):
    dtypes = backends()[backend].dtypes
    return [d for d in (torch.float32, torch.float16, torch.bfloat16) if d in dtypes]


@pytest.mark.parametrize("ac_dtype", AUTOCAST_DTYPES, ids=str)
@pytest.mark.parametrize("backend", FORWARD_BACKENDS)
def test_forward_inside_cuda_autocast_is_the_forward_outside(backend, ac_dtype):
    for in_dtype in _input_dtypes(backend):
        q, k = _qk(in_dtype, seed=1)
        with torch.no_grad():
            want = compute_amf(q, k, backend=backend, **GEOM)
            want_hard = compute_amf(q, k, mode="argmax", backend=backend, **GEOM)
            with torch.autocast("cuda", dtype=ac_dtype):
                got = compute_amf(q, k, backend=backend, **GEOM)
                hard = compute_amf(q, k, mode="argmax", backend=backend, **GEOM)
        assert got.dtype == torch.float32 and hard.dtype == torch.float32
        _close(got, want)
        assert torch.equal(hard, want_hard)
        assert rel_err(got.cpu(), amf_reference(q.cpu(), k.cpu(), **GEOM)) < SOFT_RTOL[in_dtype]


def _grads(q, k, up, backend, ac_dtype, autocast_forward, autocast_backward):
    qq, kk = q.clone().requires_grad_(), k.clone().requires_grad_()
    with torch.autocast("cuda", dtype=ac_dtype, enabled=autocast_forward):
        out = compute_amf(qq, kk, backend=backend, **GEOM)
    with torch.autocast("cuda", dtype=ac_dtype, enabled=autocast_backward):
        out.backward(up)
    return out.detach(), qq.grad, kk.grad


@pytest.mark.parametrize("ac_dtype", AUTOCAST_DTYPES, ids=str)
@pytest.mark.parametrize("backend", GRAD_BACKENDS)
def test_backward_inside_cuda_autocast_is_the_backward_outside(backend, ac_dtype):
    for in_dtype in _input_dtypes(backend):
        q, k = _qk(in_dtype, seed=2)
        up = torch.randn((1, 2, 2, 35, 2), device="cuda", generator=torch.Generator("cuda").manual_seed(3))
        want = _grads(q, k, up, backend, ac_dtype, False, False)
        # forward and backward inside; only the backward (the engine runs it with .backward()'s
        # autocast state); only the forward
        for fwd, bwd in ((True, True), (False, True), (True, False)):
            got = _grads(q, k, up, backend, ac_dtype, fwd, bwd)
            assert got[1].dtype == in_dtype
            for g, w in zip(got, want, strict=True):
                _close(g, w)


@pytest.mark.parametrize("ac_dtype", AUTOCAST_DTYPES, ids=str)
def test_shim_in_the_research_call_pattern_under_cuda_autocast_with_grad_scaler(ac_dtype):
    """The research code's pattern: argmax reference under no_grad + autocast, then the soft loss
    backpropagated under autocast through a GradScaler; gradients as without autocast."""
    kw = dict(h=5, w=7, nframes=2, temp=2)
    q_ref, k_ref = _qk(ac_dtype, seed=4, shape=(2, 4, 226 + 70, 64))
    q32, k32 = _qk(torch.float32, seed=5, shape=(2, 4, 226 + 70, 64))

    def run(autocast):
        leaves = [t.clone().requires_grad_() for t in (q32, k32)]
        opt = torch.optim.SGD(leaves, lr=0.1)
        scaler = torch.amp.GradScaler("cuda", enabled=autocast)
        with torch.autocast("cuda", dtype=ac_dtype, enabled=autocast):
            with torch.no_grad():
                ref = compute_motion_flow(q_ref, k_ref, argmax=True, **kw)
            gen = compute_motion_flow(leaves[0].to(ac_dtype), leaves[1].to(ac_dtype), **kw)
            loss = amf_loss(gen, ref)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grads = [t.grad.clone() for t in leaves]
        scaler.step(opt)
        scaler.update()
        return ref, loss.detach(), grads, leaves

    want_ref, want_loss, want_grads, _ = run(False)
    ref, loss, grads, stepped = run(True)
    assert torch.equal(ref, want_ref) and (ref != 0).any()
    _close(loss, want_loss)
    for g, w in zip(grads, want_grads, strict=True):
        assert g.abs().sum() > 0
        _close(g, w)
    assert not torch.equal(stepped[0].detach(), q32)  # no inf found: the scaler took the step
