"""CogVideoX 1.5's temporal patches: one token covers ``patch_size_t`` (2) latent frames.

diffusers' ``CogVideoXPipeline`` pads the latent frames to a multiple of ``patch_size_t`` (one extra latent frame
in front when their count is odd), runs the transformer on ``ceil(F / patch_size_t)`` temporal patches, and drops
the extra frame before decoding, so it writes the frames a 1.0 model would. Here the run's latent keeps the real
``F`` frames (the family's VAE encode/decode see no padding); each forward puts the extra frame in front, as
diffusers' CogVideoX 1.5 image-to-video pipeline pads its image latents (a copy of the first latent frame), and
drops its prediction. So the token grid, the RoPE tables and the AMF's frame axis are in temporal patches:
patch ``i`` holds latent frames ``2i - 1`` and ``2i`` (the first: latent frame 0 and its copy) when ``F`` is odd,
``2i`` and ``2i + 1`` when it is even. CogVideoX 1.0 (``patch_size_t`` None) is the case ``p_t = 1``.
"""

from __future__ import annotations

import torch


def patch_t(transformer_or_config) -> int:
    """Latent frames per temporal patch: ``patch_size_t``, or 1 for CogVideoX 1.0."""
    cfg = getattr(transformer_or_config, "config", transformer_or_config)
    p_t = cfg.get("patch_size_t") if isinstance(cfg, dict) else getattr(cfg, "patch_size_t", None)
    return int(p_t or 1)


def pad_count(latent_frames: int, p_t: int) -> int:
    """Latent frames diffusers' pipeline adds in front so that ``p_t`` divides their count."""
    return (-latent_frames) % p_t


def patch_frames(latent_frames: int, p_t: int) -> int:
    """Temporal patches (the token grid's and the AMF's frame axis) for ``latent_frames``."""
    return (latent_frames + p_t - 1) // p_t


def pad_latent(latent: torch.Tensor, p_t: int) -> tuple[torch.Tensor, int]:
    """``[B, F, C, h, w]`` with copies of its first latent frame in front up to a multiple of ``p_t``, and how many."""
    pad = pad_count(latent.shape[1], p_t)
    if pad == 0:
        return latent, 0
    return torch.cat([latent[:, :1].expand(-1, pad, -1, -1, -1), latent], dim=1), pad
