"""Backend registry and selection.

Each backend declares what it takes (devices, dtypes, modes, gradients) and whether it can run
on this machine at all. Selection never falls back silently: asking for a backend by name that
cannot take the input raises with its reasons, and ``auto`` records why it skipped the ones it
skipped (see :func:`ditflow_fast.choose_backend`).
"""

from __future__ import annotations

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
    # Lower runs first under "auto"; None keeps a backend out of "auto" (the materialising oracle).
    auto_rank: int | None = None
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


def select(problem: AMFProblem, name: str, needs_grad: bool) -> Choice:
    if not isinstance(name, str) or (name != "auto" and name not in _REGISTRY):
        raise ValueError(f"backend must be 'auto' or one of {sorted(_REGISTRY)}, got {name!r}")
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
