"""LTX-Video's sampler: Euler on flow-matching sigmas, shifted by the video's token count as ``LTXPipeline`` does.

The pipeline's rule (``LTXPipeline.__call__``): sigmas ``linspace(1, 1/steps, steps)``, shifted with
``mu = calculate_shift(F' * h * w, base_image_seq_len, max_image_seq_len, base_shift, max_shift)`` from the
scheduler's config (dynamic shifting), stretched to ``shift_terminal``; both helpers are diffusers' own. Its
only state is the step index, saved with the latent so that a resumed run is identical.
"""

from __future__ import annotations

import torch

from ..base import Sampler
from .presets import SCHEDULER


def make_scheduler(scheduler_config: dict | None = None):
    """A ``FlowMatchEulerDiscreteScheduler`` from a folder's config, or LTX-Video's (presets.SCHEDULER)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    cfg = dict(scheduler_config or SCHEDULER)
    if cfg.get("_class_name", "FlowMatchEulerDiscreteScheduler") != "FlowMatchEulerDiscreteScheduler":
        raise ValueError(f"the LTX sampler is FlowMatchEulerDiscreteScheduler's; the folder's scheduler is a "
                         f"{cfg['_class_name']}")
    return FlowMatchEulerDiscreteScheduler.from_config(cfg)


class LTXSampler(Sampler):
    """Euler on LTX's shifted flow sigmas; ``seq_len``: the latent's ``F' * h * w`` (the pipeline's
    ``video_sequence_length``, which sets the shift)."""

    def __init__(self, scheduler, seq_len: int):
        super().__init__(scheduler)
        self.seq_len = int(seq_len)

    def set_timesteps(self, steps: int, device) -> list:
        import numpy as np
        from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift, retrieve_timesteps

        c = self.sched.config
        mu = calculate_shift(self.seq_len, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                             c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        sigmas = np.linspace(1.0, 1 / steps, steps)
        timesteps, _ = retrieve_timesteps(self.sched, steps, device, None, sigmas=sigmas, mu=mu)
        return list(timesteps)

    def _index(self, t) -> int:
        """The index of timestep ``t`` in the schedule; ``t`` may be the loop's whole-number key of a fractional
        flow-matching timestep (within one unit of it)."""
        ts = self.sched.timesteps.float().cpu()
        i = int((ts - float(t)).abs().argmin())
        if abs(float(ts[i]) - float(t)) >= 1.0:
            raise ValueError(f"timestep {t} is not one of this schedule's ({[round(float(x), 2) for x in ts]})")
        return i

    def add_noise(self, x, noise, t):
        """The flow-matching forward process, ``sigma * noise + (1 - sigma) * x`` (the scheduler's own
        ``scale_noise`` at the schedule's exact timestep)."""
        i = self._index(t)
        return self.sched.scale_noise(x, self.sched.timesteps[i:i + 1].to(x.device), noise)

    def scale_model_input(self, x, t):
        return x  # flow matching feeds the latent as it is (the pipeline does not scale it)

    def step(self, i, t, pred, latents, generator):
        if not torch.is_tensor(t) or not t.is_floating_point():  # the scheduler refuses integer timesteps
            t = self.sched.timesteps[i]
        return self.sched.step(pred, t, latents, generator=generator, return_dict=False)[0]

    def state(self):
        return {}, {"step_index": self.sched.step_index, "num_inference_steps": self.sched.num_inference_steps}

    def load_state(self, tensors, meta, device):
        if not meta:
            return
        if meta.get("num_inference_steps") != self.sched.num_inference_steps:
            raise ValueError(f"a saved LTX sampler state of {meta.get('num_inference_steps')} steps for a schedule "
                             f"of {self.sched.num_inference_steps}")
        self.sched._step_index = meta["step_index"]
