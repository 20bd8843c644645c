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

Argmax mode is piecewise constant in q and k: its gradient through the op is zero (``None``),
and the op does not raise when its inputs require grad.
"""

from __future__ import annotations

import torch

from . import eager
from ._problem import apply_layout, as_int, validate

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
    with torch.enable_grad():
        qq, kk = q.detach().requires_grad_(), k.detach().requires_grad_()
        out = eager.run(qq, kk, frames=frames, height=height, width=width, temperature=temperature,
                        mode="soft", text_tokens=text_tokens, backend=backend, layout="bhtd")
        dq, dk = torch.autograd.grad(out, (qq, kk), grad)
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


def amf(q, k, *, frames, height, width, temperature=2.0, mode="soft", text_tokens=0, backend="auto",
        layout="bhtd"):
    """:func:`ditflow_fast.compute_amf` through the custom op (same arguments, shapes and errors).

    Use this inside functions given to ``torch.compile``; it is differentiable in soft mode.
    ``layout="bthd"`` is applied here, as a transposed view, so the op itself always sees
    ``[B, H, T, d]``; integer-like geometry (``numpy.int64``, ...) is made a Python int for the schema.
    """
    q, k = apply_layout(q, k, layout)
    frames, height, width, text_tokens = (
        as_int(name, v) for name, v in
        (("frames", frames), ("height", height), ("width", width), ("text_tokens", text_tokens))
    )
    if isinstance(temperature, int) and not isinstance(temperature, bool):
        temperature = float(temperature)  # the schema's float does not take an int
    return torch.ops.ditflow_fast.amf(q, k, frames, height, width, temperature, mode, text_tokens, backend)
