"""The one eager path of the AMF: validate, select a backend, run it, check its output.

:func:`ditflow_fast.compute_amf` calls :func:`run` outside ``torch.compile``, and the custom op
(:mod:`ditflow_fast.ops`) calls it as its real kernel, so both give the same result, the same errors
and the same backend choice. Nothing here imports :mod:`ditflow_fast.api` or :mod:`ditflow_fast.ops`.
"""

from __future__ import annotations

import math

import torch

from . import backends as _registered  # noqa: F401  (imports, and so registers, every backend)
from ._problem import AMFProblem, autocast_disabled, check_values, finite_max, validate
from .dispatch import Choice, backends, select


def needs_grad(problem: AMFProblem) -> bool:
    return problem.mode == "soft" and torch.is_grad_enabled() and (problem.q.requires_grad or problem.k.requires_grad)


def choose(q, k, *, frames, height, width, temperature, mode, text_tokens, backend,
           layout) -> tuple[AMFProblem, Choice]:
    """The validated problem and the backend that will run it (with why the others were skipped)."""
    problem = validate(
        q, k, frames=frames, height=height, width=width,
        temperature=temperature, mode=mode, text_tokens=text_tokens, layout=layout,
    )
    return problem, select(problem, backend, needs_grad(problem))


def run(q, k, *, frames, height, width, temperature, mode, text_tokens, backend, layout) -> torch.Tensor:
    """:func:`ditflow_fast.compute_amf` outside ``torch.compile`` (same arguments, all keyword)."""
    problem, choice = choose(q, k, frames=frames, height=height, width=width, temperature=temperature, mode=mode,
                             text_tokens=text_tokens, backend=backend, layout=layout)
    if not backends()[choice.name].checks_values:
        with autocast_disabled():
            check_values(problem)
    out = execute(problem, choice.name)
    # A safety net over the (small, F*N*2) output: no backend may hand back NaN, whatever slipped past.
    if math.isnan(finite_max(out)):
        raise RuntimeError(f"backend {choice.name!r} produced NaN or inf from finite, in-range q and k; "
                           "this is a bug, please report it with the shapes and the backend")
    return out


def execute(problem: AMFProblem, name: str) -> torch.Tensor:
    """Backend ``name`` on ``problem`` with autocast off, shaped as the caller's input: :func:`run`
    without its checks, for a backward that re-runs a forward :func:`run` has checked."""
    with autocast_disabled():
        out = backends()[name].run(problem)
    return out[0] if problem.squeeze else out
