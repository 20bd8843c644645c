"""The contract between the guidance loop and a model family, and the pieces families share.

A family is a class of static/class methods (no per-run state; per-transformer caches live on the
transformer). :class:`ditflow_fast.guidance.loop.Guide` calls only these, plus a :class:`Sampler`:

- recognising and loading: ``matches(model_index, transformer_class_name)``,
  ``load(model, dtype) -> dict(transformer, transformer_2, vae, scheduler_config, boundary_ratio,
  expand_timesteps)``;
- attention: ``blocks(tr)``, ``install(tr, controller)``, ``uninstall(tr)`` (a thin processor per
  block that computes q/k/v the family's way and asks the shared
  :class:`~ditflow_fast.guidance.processor.GuidanceController` what to capture, inject or stop);
- text: ``text_position`` (``"prefix"``, ``"none"``; ``"suffix"`` for HunyuanVideo/Mochi later): the
  processors strip the text tokens, so the AMF sees video tokens only;
- forwards: ``forward(tr, latent, text, t, emb=None)`` (the prediction) and
  ``run_until(tr, latent, text, t, emb=None, *, stop_after, qk_blocks, out_blocks, copy_kv_blocks)``;
- positional embeddings for ``--opt-mode emb``: ``initial_emb(tr, latent)``, ``emb_kind(tr)``,
  ``emb_fingerprint(tr)`` (recorded in saved embeddings; injection refuses another family/size);
- latents: ``token_grid(tr, latent) -> (F', h, w)``, ``geometry(tr, vae, frames, height, width)``
  (latent shape, or a :class:`ModelError` naming the valid frame counts), ``encode_video``,
  ``decode_latents`` with the family's normalisation;
- the sampler: ``make_sampler(scheduler_or_config, cfg) -> Sampler`` and ``guide_cfg(cond, uncond,
  scale, t, cfg)``, the classifier-free guidance rule;
- defaults: ``defaults(config) -> dict`` (guidance block, frames, size, dtype, CFG, steps), used by
  the run and by ``--dry-run`` alike; ``memory_config(model)`` and ``estimate(...)`` for ``--dry-run``.
"""

from __future__ import annotations

import torch

from ..errors import ModelError  # noqa: F401  (re-exported: families raise it)


class Sampler:
    """A diffusers scheduler behind one interface, with a state that makes resuming exact.

    ``step`` gets the guided step index ``i`` and the timesteps so that multistep schedulers whose
    history lives outside (CogVideoX's DPM: ``x0_prev``) or inside the scheduler object (UniPC)
    both resume bit for bit: :meth:`state` returns tensors and json-able metadata saved with the
    latent after every step, :meth:`load_state` puts them back.
    """

    def __init__(self, scheduler):
        self.sched = scheduler

    def set_timesteps(self, steps: int, device) -> list:
        self.sched.set_timesteps(steps, device=device)
        return list(self.sched.timesteps)

    @property
    def init_noise_sigma(self) -> float:
        return float(getattr(self.sched, "init_noise_sigma", 1.0))

    def add_noise(self, x, noise, t):
        return self.sched.add_noise(x, noise, torch.as_tensor([t], device=x.device).reshape(1))

    def scale_model_input(self, x, t):
        return self.sched.scale_model_input(x, t)

    def step(self, i: int, t, pred: torch.Tensor, latents: torch.Tensor, generator) -> torch.Tensor:
        return self.sched.step(pred, t, latents, generator=generator, return_dict=False)[0]

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        return {}, {}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict, device) -> None:
        """Restore :meth:`state`; nothing to do for single-step schedulers."""


def decoded_frames_causal(latent_frames: int, temporal: int) -> int:
    """Frames a causal video VAE (Wan) decodes from ``latent_frames``: the first latent frame gives one
    frame, every later one ``temporal``."""
    return 1 + (latent_frames - 1) * temporal


def nearest_valid(frames: int, valid) -> list[int]:
    """The valid counts nearest to ``frames`` (one below and one above where they exist)."""
    below = [v for v in valid if v < frames]
    above = [v for v in valid if v > frames]
    return ([max(below)] if below else []) + ([min(above)] if above else [])
