"""Defects an adversarial probe found in the AMF entry points.

1. Double backward (``create_graph=True``, then differentiating the gradient again): every backend
   either gives the true second derivatives (``gradgradcheck``) or raises naming itself, never the
   first-order gradient treated as a constant; the custom op raises too.
2. A geometry error inside ``torch.compile``: the ``ValueError``'s message, not an unrelated one.
3. The overflow refusal suggests float64 only to input that is not float64 already.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys

import pytest
import torch

# As tests/core/test_triton_kernels.py: the Triton interpreter must be chosen before triton's first
# import of the process, and only off CUDA machines (there it would leak into the GPU tests).
if "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from ditflow_fast import compute_amf, ops  # noqa: E402
from ditflow_fast import dispatch as dispatch_mod  # noqa: E402
from ditflow_fast.dispatch import backends  # noqa: E402

GEOM = dict(frames=2, height=2, width=3, text_tokens=1)


def _qk(dtype=torch.float64, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, 2, 13, 4, generator=gen, dtype=torch.float64) * scale).to(dtype).requires_grad_()
            for _ in range(2)]


def _on_cpu(name: str, monkeypatch) -> None:
    """Skip unless backend ``name`` can run on CPU tensors here; ``triton`` is let onto them under
    Triton's interpreter."""
    if name not in backends():
        pytest.skip(f"{name} is not registered")
    if name == "triton":
        triton = pytest.importorskip("triton")
        if type(triton.language.max).__name__ != "InterpretedFunction":
            pytest.skip("triton was imported before this module without TRITON_INTERPRET=1")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        entry = dataclasses.replace(backends()["triton"], devices=("cpu", "cuda"), unavailable=lambda: None)
        monkeypatch.setitem(dispatch_mod._REGISTRY, "triton", entry)
    why = backends()[name].unavailable()
    if why:
        pytest.skip(f"{name}: {why}")


ONCE_DIFFERENTIABLE = [n for n in ("cpu", "torch", "triton") if n in backends()]


def test_the_backends_that_claim_double_backward_are_the_ones_tested_for_it():
    claim = {n for n, b in backends().items() if b.double_backward}
    assert claim == {"reference"}
    assert not claim & set(ONCE_DIFFERENTIABLE)
    assert not any(b.double_backward and not b.differentiable for b in backends().values())


@pytest.mark.parametrize("name", ONCE_DIFFERENTIABLE)
@pytest.mark.parametrize("loss", ["square", "linear"])
@pytest.mark.parametrize("how", ["backward", "grad"])
def test_double_backward_raises_naming_the_backend(name, loss, how, monkeypatch):
    """The probe: ``cpu`` gave ``q.grad`` exactly 1 (second-order term dropped), ``torch`` an in-place
    error. A linear loss (upstream gradient without a graph) and ``autograd.grad`` with ``inputs=q``
    (which only runs the nodes that lead to q) must raise too."""
    _on_cpu(name, monkeypatch)
    dtype = torch.float32 if name == "triton" else torch.float64
    q, k = _qk(dtype)
    w = torch.randn(1, 2, 2, 6, 2, generator=torch.Generator().manual_seed(1), dtype=dtype)

    def first(create_graph):
        out = compute_amf(q, k, backend=name, **GEOM)
        loss_ = out.square().sum() if loss == "square" else (out * w).sum()
        return torch.autograd.grad(loss_, (q, k), create_graph=create_graph)

    dq, dk = first(create_graph=True)
    want_dq, want_dk = first(create_graph=False)
    assert torch.equal(dq, want_dq) and torch.equal(dk, want_dk)  # the first order is unchanged
    second = dq.square().sum() + q.sum()  # the q.sum() term alone must not let it pass silently
    msg = f"double backward is not supported by backend '{name}'.*backend='reference'"
    with pytest.raises(RuntimeError, match=msg):
        if how == "backward":
            second.backward()
        else:
            torch.autograd.grad(second, (q,))


def test_reference_backend_passes_gradgradcheck():
    q, k = _qk(seed=2)

    def fn(q_, k_):
        return compute_amf(q_, k_, backend="reference", **GEOM)

    assert torch.autograd.gradgradcheck(fn, (q, k))


@pytest.mark.parametrize("name", ["torch", "cpu", "reference"])
@pytest.mark.parametrize("dims", [4, 3])
def test_op_gradient_is_the_backends_and_double_backward_raises_naming_it(name, dims, monkeypatch):
    """The op's backward is itself an opaque op, so no backend has second derivatives through it.
    Its first order is the backend's own; before, it raised for ``reference`` and for every backend
    on ``[H, T, d]`` input (plain torch ops inside an op's kernel record no graph)."""
    _on_cpu(name, monkeypatch)
    q, k = _qk(seed=3)
    if dims == 3:
        q, k = (t.detach()[0].requires_grad_() for t in (q, k))
    out = ops.amf(q, k, backend=name, **GEOM)
    (dq,) = torch.autograd.grad(out.square().sum(), (q,), create_graph=True)
    (want,) = torch.autograd.grad(compute_amf(q, k, backend=name, **GEOM).square().sum(), (q,))
    torch.testing.assert_close(dq, want, rtol=1e-12, atol=0)
    with pytest.raises(RuntimeError, match=rf"double backward is not supported through torch\.ops\.ditflow_fast"
                                           rf"\.amf \(backend '{name}'\).*compute_amf"):
        dq.square().sum().backward()


TOKEN_MSG = "q/k token dimension T=13 must equal text_tokens + frames*height*width = 1 + 2*3*3 = 19"


@pytest.mark.parametrize("entry", ["ops.amf", "compute_amf"])
def test_geometry_error_inside_torch_compile_is_the_value_error(entry):
    """Without ``fullgraph`` the ``ValueError`` itself (before: ``TorchRuntimeError``); with
    ``fullgraph=True`` dynamo lets no exception out of a traced function but its own, so it is a
    ``TorchDynamoException`` whose message holds the ``ValueError``'s (docs/amf.md)."""
    q, k = (t.detach().float() for t in _qk(seed=4))
    geom = dict(GEOM, height=3)
    call = ops.amf if entry == "ops.amf" else compute_amf

    def fn(q_, k_):
        return call(q_, k_, **geom)

    torch._dynamo.reset()  # a frame once run eagerly after a graph break is not traced again
    with pytest.raises(ValueError, match=re.escape(TOKEN_MSG)):
        torch.compile(fn, backend="eager")(q, k)
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.Unsupported, match=re.escape(f"ValueError('{TOKEN_MSG}')")):
        torch.compile(fn, backend="eager", fullgraph=True)(q, k)


def test_geometry_error_of_the_raw_op_inside_torch_compile_holds_the_message():
    q, k = (t.detach().float() for t in _qk(seed=4))

    def fn(q_, k_):
        return torch.ops.ditflow_fast.amf(q_, k_, 2, 3, 3, 2.0, "soft", 1, "auto")

    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.TorchRuntimeError, match=re.escape(f"ValueError('{TOKEN_MSG}')")):
        torch.compile(fn, backend="eager", fullgraph=True)(q, k)


def test_overflow_refusal_suggests_float64_only_to_other_dtypes():
    q, _ = _qk(scale=1e169)
    with pytest.raises(ValueError, match="too large for float64 scores") as info:
        compute_amf(q.detach(), q.detach(), **GEOM)
    assert "pass float64" not in str(info.value)
    q32, _ = _qk(torch.float32, scale=1e19)
    with pytest.raises(ValueError, match=r"too large for float32 scores.*\(or pass float64\)"):
        compute_amf(q32.detach(), q32.detach(), **GEOM)
