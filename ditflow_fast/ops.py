"""``torch.ops.ditflow_fast.amf``: the AMF as a ``torch.library`` custom op.

A custom op is opaque to ``torch.compile``: the compiler traces its fake kernel for shapes and
calls the real one at run time, so a function that calls :func:`amf` compiles with
``fullgraph=True`` even though the backends inside are Python loops, Triton launches or native
calls. The op's real kernel is the eager path of :func:`ditflow_fast.compute_amf`
(:func:`ditflow_fast.eager.run`: validation, error messages, ``backend="auto"``), so every backend
is reachable through it.

Ops (schemas are generated from the annotations below):

* ``ditflow_fast::amf(Tensor q, Tensor k, int frames, int height, int width, float temperature,
  str mode, int text_tokens, str backend) -> Tensor``: the forward, on ``[B, H, T, d]`` (``[H, T, d]``)
  q and k; :func:`amf` takes ``layout="bthd"`` and transposes before the op.
* ``ditflow_fast::amf_backward(Tensor grad, Tensor q, Tensor k, ...same...) -> (Tensor, Tensor)``:
  ``(dq, dk)`` of the soft AMF. A custom op cannot hand a backend's saved state (the
  log-sum-exp) from its forward to its backward, so the backward re-runs the chosen backend's
  forward under autograd and then its own recomputing backward: one extra forward, which every
  backend's backward recomputes in part anyway. Call the backend directly
  (:func:`ditflow_fast.compute_amf` outside ``torch.compile``) when that matters more than compilation.
  It is not differentiable itself: differentiating the op's gradient again (``create_graph=True``)
  raises ``RuntimeError: double backward is not supported through torch.ops.ditflow_fast.amf
  (backend '...')``, whatever the backend.

Argmax mode is piecewise constant in q and k: its gradient through the op is zero (``None``),
and the op does not raise when its inputs require grad.

Errors: :func:`amf` validates its arguments before entering the op, so a wrong argument raises the
``ValueError``/``TypeError`` of :func:`ditflow_fast.compute_amf`, also inside ``torch.compile``
(dynamo breaks the graph there and re-raises it). With ``fullgraph=True`` dynamo lets no exception
out of a traced function but its own: the call raises ``torch._dynamo.exc.Unsupported`` ("Observed
exception", a ``RuntimeError``), whose message holds ``ValueError('<the same message>')``. Calling
``torch.ops.ditflow_fast.amf`` directly under ``torch.compile`` skips that: its fake kernel raises the
same error, which dynamo wraps as ``torch._dynamo.exc.TorchRuntimeError``, message included.
"""

from __future__ import annotations

import torch

from . import eager
from ._problem import apply_layout, validate
from .dispatch import backends, check_backend_name, double_backward_error

_NAMESPACE = "ditflow_fast"


@torch.library.custom_op(f"{_NAMESPACE}::amf", mutates_args=())
def _amf_op(q: torch.Tensor, k: torch.Tensor, frames: int, height: int, width: int, temperature: float,
            mode: str, text_tokens: int, backend: str) -> torch.Tensor:
    out = eager.run(q, k, frames=frames, height=height, width=width, temperature=temperature, mode=mode,
                    text_tokens=text_tokens, backend=backend, layout="bhtd")
    return out.contiguous()


@_amf_op.register_fake
def _amf_fake(q, k, frames, height, width, temperature, mode, text_tokens, backend):
    # The same validation as the real op, so a wrong argument fails at trace time with the same message.
    p = validate(q, k, frames=frames, height=height, width=width, temperature=temperature, mode=mode,
                 text_tokens=text_tokens)
    return q.new_empty(p.out_shape(), dtype=p.out_dtype)


@torch.library.custom_op(f"{_NAMESPACE}::amf_backward", mutates_args=())
def _amf_backward_op(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, frames: int, height: int, width: int,
                     temperature: float, text_tokens: int, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    # An op's kernel runs below the autograd dispatch key: plain torch ops in it record no graph, so
    # the [H, T, d] case is batched here rather than by a select on the backend's output.
    squeeze = q.dim() == 3
    if squeeze:
        grad, q, k = grad[None], q[None], k[None]
    kw = dict(frames=frames, height=height, width=width, temperature=temperature, mode="soft",
              text_tokens=text_tokens)
    if backend in backends() and backends()[backend].double_backward:
        # Plain torch ops all through (reference): functorch's vjp records them. The other backends'
        # autograd Functions record themselves (and functorch would need them in setup_context form).
        _, vjp = torch.func.vjp(lambda q_, k_: eager.execute(validate(q_, k_, **kw), backend), q, k)
        dq, dk = vjp(grad)
    else:
        with torch.enable_grad():
            qq, kk = q.detach().requires_grad_(), k.detach().requires_grad_()
            out = eager.run(qq, kk, **kw, backend=backend, layout="bhtd")
            dq, dk = torch.autograd.grad(out, (qq, kk), grad)
    if squeeze:
        dq, dk = dq[0], dk[0]
    return dq.contiguous(), dk.contiguous()


@_amf_backward_op.register_fake
def _amf_backward_fake(grad, q, k, frames, height, width, temperature, text_tokens, backend):
    return q.new_empty(q.shape), k.new_empty(k.shape)


def _setup_context(ctx, inputs, output):
    q, k, frames, height, width, temperature, mode, text_tokens, backend = inputs
    ctx.save_for_backward(q, k)
    ctx.args = (frames, height, width, temperature, mode, text_tokens, backend)


def _backward(ctx, grad):
    q, k = ctx.saved_tensors
    frames, height, width, temperature, mode, text_tokens, backend = ctx.args
    if mode != "soft":
        return (None,) * 9
    dq, dk = torch.ops.ditflow_fast.amf_backward(grad, q, k, frames, height, width, temperature, text_tokens, backend)
    return (dq if ctx.needs_input_grad[0] else None, dk if ctx.needs_input_grad[1] else None) + (None,) * 7


torch.library.register_autograd(f"{_NAMESPACE}::amf", _backward, setup_context=_setup_context)


def _backward_setup_context(ctx, inputs, output):
    ctx.backend = inputs[-1]


def _no_double_backward(ctx, dq_grad, dk_grad):
    raise double_backward_error(f"through torch.ops.ditflow_fast.amf (backend {ctx.backend!r})")


# Without it the second backward fails with torch's "no autograd formula", which names no backend.
torch.library.register_autograd(f"{_NAMESPACE}::amf_backward", _no_double_backward,
                                setup_context=_backward_setup_context)


def amf(q, k, *, frames, height, width, temperature=2.0, mode="soft", text_tokens=0, backend="auto",
        layout="bhtd"):
    """:func:`ditflow_fast.compute_amf` through the custom op (same arguments, shapes and errors).

    Use this inside functions given to ``torch.compile``; it is differentiable in soft mode (once).
    ``layout="bthd"`` is applied here, as a transposed view, so the op itself always sees
    ``[B, H, T, d]``; integer-like geometry (``numpy.int64``, ...) is made a Python int for the schema.
    """
    # Validated here, not only in the op's fake kernel: dynamo wraps whatever a fake kernel raises,
    # while an exception of traced Python code is re-raised as itself unless fullgraph=True.
    p = validate(q, k, frames=frames, height=height, width=width, temperature=temperature, mode=mode,
                 text_tokens=text_tokens, layout=layout)
    check_backend_name(backend)  # else the schema's "Expected a value of type 'str'", or a failure inside the op
    q, k = apply_layout(q, k, layout)
    return torch.ops.ditflow_fast.amf(q, k, p.frames, p.height, p.width, p.temperature, p.mode, p.text_tokens,
                                      backend)
