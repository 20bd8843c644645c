"""LTX-Video's latent geometry: the frame rule of its causal 8x-temporal VAE, the sizes a model takes, and the
packing of the ``[B, C, F, H, W]`` latent into the transformer's ``[B, F*H*W, C]`` tokens (no weights needed).

The family exposes latents as ``[B, C, F, H, W]`` (``latent_layout = "BCFHW"``, normalised as ``LTXPipeline``
normalises them); only the transformer call packs them, with the pipeline's own ``_pack_latents``: token
``i = (f * H + h) * W + w`` (1x1 patches), the frame-major order the AMF's ``(frames, height, width)`` grid reads.
"""

from __future__ import annotations

from ..base import ModelError
from .presets import SPATIAL, TEMPORAL


def cfg_get(cfg, key, default=None):
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    value = getattr(cfg, key, default)
    return default if value is None else value


def vae_ratios(vae_config) -> tuple[int, int]:
    """``(temporal, spatial)`` compression of an ``AutoencoderKLLTXVideo`` config, as the model computes them:
    the explicit ratios when set, else ``patch_size(_t) * 2 ** (number of spatio-temporal downsamplings)``."""
    scaling = sum(bool(s) for s in cfg_get(vae_config, "spatio_temporal_scaling", (True, True, True, False)))
    spatial = cfg_get(vae_config, "spatial_compression_ratio") or cfg_get(vae_config, "patch_size", 4) * 2**scaling
    temporal = cfg_get(vae_config, "temporal_compression_ratio") or cfg_get(vae_config, "patch_size_t", 1) * 2**scaling
    return int(temporal), int(spatial)


def check_vae(vae_config, model: str = "") -> None:
    """The family's RoPE scale and frame rule assume the 32x / 8x VAE every public LTX-Video model has."""
    t, s = vae_ratios(vae_config)
    if (t, s) != (TEMPORAL, SPATIAL):
        where = f"--model {model}: " if model else ""
        raise ModelError(f"{where}an LTX VAE compressing {s}x spatially and {t}x in time; the LTX family takes the "
                         f"{SPATIAL}x / {TEMPORAL}x VAE of the public LTX-Video models")


def check_frames(frames: int, temporal: int = TEMPORAL) -> None:
    """``8k + 1`` frames: the causal VAE encodes the first frame alone and every later 8 into one latent frame,
    and decodes ``8 (L - 1) + 1`` frames (measured on the tiny VAE: tests/families/test_family_conformance.py)."""
    if frames < 1 or (frames - 1) % temporal:
        lo = max(1, (frames - 1) // temporal * temporal + 1)
        near = f"{lo} or {lo + temporal}" if 1 <= lo <= frames else f"{lo}"
        raise ModelError(f"--frames {frames}: the LTX VAE takes {temporal}k+1 frames; nearest: {near}")


def latent_shape(vae_config, transformer_config, frames: int, height: int, width: int) -> tuple:
    """``(1, C, (frames - 1) / 8 + 1, height / 32, width / 32)``, or :class:`ModelError` naming the valid counts."""
    check_vae(vae_config)
    check_frames(frames)
    p = int(cfg_get(transformer_config, "patch_size", 1))
    pt = int(cfg_get(transformer_config, "patch_size_t", 1))
    step = SPATIAL * p
    if height % step or width % step:
        raise ModelError(f"--height/--width {height}x{width}: must be multiples of {step} for this model "
                         f"(VAE x{SPATIAL}, patch {p}x{p})")
    lat_f = (frames - 1) // TEMPORAL + 1
    if lat_f % pt:
        raise ModelError(f"--frames {frames}: {lat_f} latent frames, not a multiple of the temporal patch {pt}")
    return 1, int(cfg_get(vae_config, "latent_channels", 128)), lat_f, height // SPATIAL, width // SPATIAL


def pack(latent, transformer_config):
    """``[B, C, F, H, W]`` -> tokens ``[B, F*H*W, C*pt*p*p]`` (``LTXPipeline._pack_latents``)."""
    from diffusers import LTXPipeline

    return LTXPipeline._pack_latents(latent, int(cfg_get(transformer_config, "patch_size", 1)),
                                     int(cfg_get(transformer_config, "patch_size_t", 1)))


def unpack(tokens, grid: tuple[int, int, int], transformer_config):
    """The inverse of :func:`pack` (``LTXPipeline._unpack_latents``); ``grid``: the token grid ``(F', h, w)``."""
    from diffusers import LTXPipeline

    return LTXPipeline._unpack_latents(tokens, *grid, int(cfg_get(transformer_config, "patch_size", 1)),
                                       int(cfg_get(transformer_config, "patch_size_t", 1)))
