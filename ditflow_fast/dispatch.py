"""Backend registry and selection.

Each backend declares what it takes (devices, dtypes, modes, gradients) and whether it can run
on this machine at all. Selection never falls back silently: asking for a backend by name that
cannot take the input raises with its reasons, and ``auto`` records why it skipped the ones it
skipped (see :func:`ditflow_fast.choose_backend`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ._problem import AMFProblem


@dataclass(frozen=True)
class Backend:
    name: str
    summary: str
    run: Callable[[AMFProblem], torch.Tensor]
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    modes: tuple[str, ...] = ("soft", "argmax")
    differentiable: bool = True
    # Whether its gradients are differentiable again (create_graph=True); the others raise
    # double_backward_error when asked, through :func:`once_differentiable`.
    double_backward: bool = False
    # Lower runs first under "auto"; None keeps a backend out of "auto" (the materialising oracle).
    auto_rank: int | None = None
    # Whether it runs the value checks itself, in its own pass over q and k (:func:`check_maxima`), where the
    # eager path would otherwise read them once more for :func:`check_values` before running it.
    checks_values: bool = False
    # Returns None when the backend can run on this machine, else why not (a missing build, ...).
    unavailable: Callable[[], str | None] = field(default=lambda: None)

    def refusals(self, problem: AMFProblem, needs_grad: bool) -> list[str]:
        """Why this backend cannot take ``problem``; empty when it can."""
        why = []
        missing = self.unavailable()
        if missing:
            why.append(missing)
        if problem.q.device.type not in self.devices:
            why.append(f"runs on {'/'.join(self.devices) or 'no device'}, not {problem.q.device.type}")
        if problem.q.dtype not in self.dtypes:
            why.append(f"does not take {problem.q.dtype}")
        if problem.mode not in self.modes:
            why.append(f"has no {problem.mode!r} mode")
        if needs_grad and not self.differentiable:
            why.append("has no backward, and q or k requires grad")
        return why


_REGISTRY: dict[str, Backend] = {}


def double_backward_error(where: str) -> RuntimeError:
    """The error of differentiating a gradient computed ``where`` (names the backend) a second time."""
    able = [n for n, b in _REGISTRY.items() if b.double_backward]
    hint = (f"use ditflow_fast.compute_amf(..., backend={able[0]!r}) outside torch.compile for second derivatives"
            if able else "no registered backend has second derivatives")
    return RuntimeError(f"double backward is not supported {where}: its gradient is computed without an autograd "
                        f"graph, so differentiating it again would silently drop the second-order term; {hint}")


class _RaiseIfReached(torch.autograd.Function):
    """Identity on the gradients; its backward raises. Its inputs include q and k, so a second
    backward towards them (``autograd.grad(..., inputs=q)`` prunes every other node) reaches it."""

    @staticmethod
    def forward(ctx, where, n, *tensors):
        ctx.where = where
        return tensors[:n]

    @staticmethod
    def backward(ctx, *grads):
        raise double_backward_error(ctx.where)


def once_differentiable(backend: str):
    """For a backend's autograd ``backward`` that computes without a graph: run it under ``no_grad``
    and, under ``create_graph=True``, hand back gradients whose own backward raises naming ``backend``.

    ``torch.autograd.function.once_differentiable`` does this with an anonymous message, and only
    when the incoming gradient requires grad: a linear loss would still drop the second-order term.
    The Function must save the inputs it differentiates (``ctx.save_for_backward(q, k, ...)``): they
    tie the raising node to q and k.
    """

    def decorate(backward):
        @functools.wraps(backward)
        def wrapper(ctx, *grads):
            with torch.no_grad():
                out = backward(ctx, *grads)
            if not torch.is_grad_enabled():
                return out
            deps = [t for t in (*grads, *ctx.saved_tensors) if isinstance(t, torch.Tensor) and t.requires_grad]
            idx = [i for i, t in enumerate(out) if isinstance(t, torch.Tensor)]
            if not deps or not idx:
                return out
            linked = _RaiseIfReached.apply(f"by backend {backend!r}", len(idx), *(out[i] for i in idx), *deps)
            out = list(out)
            for i, t in zip(idx, linked, strict=True):
                out[i] = t
            return tuple(out)

        return wrapper

    return decorate


def register(backend: Backend) -> Backend:
    if backend.name in _REGISTRY or backend.name == "auto":
        raise ValueError(f"backend name {backend.name!r} is taken")
    _REGISTRY[backend.name] = backend
    return backend


def backends() -> dict[str, Backend]:
    """Registered backends by name, in registration order."""
    return dict(_REGISTRY)


@dataclass(frozen=True)
class Choice:
    """The backend a call will use, and why each other candidate was passed over."""

    name: str
    skipped: dict[str, list[str]]


def check_backend_name(name) -> None:
    """``ValueError`` unless ``name`` is ``"auto"`` or a registered backend."""
    if not isinstance(name, str) or (name != "auto" and name not in _REGISTRY):
        raise ValueError(f"backend must be 'auto' or one of {sorted(_REGISTRY)}, got {name!r}")


def select(problem: AMFProblem, name: str, needs_grad: bool) -> Choice:
    check_backend_name(name)
    if name != "auto":
        why = _REGISTRY[name].refusals(problem, needs_grad)
        if why:
            raise ValueError(f"backend {name!r} cannot run this input: " + "; ".join(why))
        return Choice(name, {})
    ranked = sorted((b for b in _REGISTRY.values() if b.auto_rank is not None), key=lambda b: b.auto_rank)
    skipped = {}
    for b in ranked:
        why = b.refusals(problem, needs_grad)
        if not why:
            return Choice(b.name, skipped)
        skipped[b.name] = why
    detail = "; ".join(f"{n}: {', '.join(w)}" for n, w in skipped.items())
    raise ValueError(f"no backend can run this input ({detail})")
