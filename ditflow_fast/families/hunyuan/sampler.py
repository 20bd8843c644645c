"""HunyuanVideo's sampler: flow-matching Euler (``FlowMatchEulerDiscreteScheduler``) as ``HunyuanVideoPipeline``
sets it up, resuming exactly.

The pipeline passes ``sigmas = linspace(1, 0, steps + 1)[:-1]`` (the scheduler shifts them: ``shift`` 7.0 in the
public folder) and starts at index 0. Euler is single-step: step ``i`` moves from ``sigmas[i]`` to
``sigmas[i + 1]``, nothing else carries over. The scheduler counts its own steps (``step_index``), so a
resumed run sets that counter from the step index before each step; then the saved latent is the whole state.
The timesteps are fractional (``sigma * 1000``): the loop hands the model these values, not their integer keys.
"""

from __future__ import annotations

import numpy as np
import torch

from ..base import Sampler


def make_scheduler(scheduler_config: dict | None = None, shift: float | None = None):
    """``FlowMatchEulerDiscreteScheduler`` from a folder's scheduler config (another class's config keeps only
    its ``shift``), or the public folder's (shift 7.0); ``shift`` overrides (``--flow-shift``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    cfg = dict(scheduler_config or {})
    if cfg and cfg.get("_class_name", "FlowMatchEulerDiscreteScheduler") == "FlowMatchEulerDiscreteScheduler":
        sched = FlowMatchEulerDiscreteScheduler.from_config(cfg)
    else:
        sched = FlowMatchEulerDiscreteScheduler(shift=float(cfg.get("shift", cfg.get("flow_shift")) or 7.0))
    if shift is not None:
        sched = FlowMatchEulerDiscreteScheduler.from_config(sched.config, shift=float(shift))
    return sched


class HunyuanSampler(Sampler):
    """Flow-matching Euler with the pipeline's sigmas; stateless beyond the latent (see the module docstring)."""

    def set_timesteps(self, steps: int, device) -> list:
        sigmas = np.linspace(1.0, 0.0, steps + 1)[:-1]  # HunyuanVideoPipeline.__call__'s
        self.sched.set_timesteps(sigmas=sigmas, device=device)
        self.sched.set_begin_index(0)
        return list(self.sched.timesteps)

    def _sigma(self, t) -> torch.Tensor:
        ts = self.sched.timesteps
        i = int(torch.argmin((ts.float() - float(t)).abs()))  # the schedule's own entry for t (t: value or key)
        return self.sched.sigmas[i].float()

    def add_noise(self, x, noise, t):
        """The scheduler's ``scale_noise``: ``sigma * noise + (1 - sigma) * x`` at the schedule's sigma for ``t``."""
        sigma = self._sigma(t).to(x.device)
        return sigma * noise + (1.0 - sigma) * x

    def scale_model_input(self, x, t):
        return x  # flow matching feeds the latent as it is

    def step(self, i, t, pred, latents, generator):
        self.sched._step_index = i  # the step counter, from the loop (a resumed run starts mid-schedule)
        return self.sched.step(pred, t, latents, generator=generator, return_dict=False)[0]
