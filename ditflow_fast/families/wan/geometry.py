"""Wan's latent geometry: the frame rule of its causal VAE and the sizes a model takes (no weights needed)."""

from __future__ import annotations

from ..base import ModelError
from .presets import _cfg_get


def latent_shape(vae_config, transformer_config, frames: int, height: int, width: int) -> tuple:
    """``(1, z_dim, F', H/s, W/s)`` for a video of this size, or :class:`ModelError`: the Wan VAE
    gives exactly ``(frames - 1) / 4 + 1`` latent frames only for ``frames = 4k + 1``, and the
    size must be a multiple of the VAE's spatial factor times the patch size."""
    temporal = int(_cfg_get(vae_config, "scale_factor_temporal", None)
                   or 2 ** sum(bool(x) for x in _cfg_get(vae_config, "temperal_downsample", [False, True, True])))
    spatial = int(_cfg_get(vae_config, "scale_factor_spatial", None) or 8)
    z = int(_cfg_get(vae_config, "z_dim", 16))
    patch = tuple(_cfg_get(transformer_config, "patch_size", (1, 2, 2)))
    check_frames(frames, temporal)
    sh, sw = spatial * patch[1], spatial * patch[2]
    if height % sh or width % sw:
        raise ModelError(f"--height/--width {height}x{width}: must be multiples of {sh}x{sw} for this model "
                         f"(VAE x{spatial}, patch {patch[1]}x{patch[2]})")
    if patch[0] != 1 and ((frames - 1) // temporal + 1) % patch[0]:
        raise ModelError(f"--frames {frames}: latent frames not a multiple of the temporal patch {patch[0]}")
    return 1, z, (frames - 1) // temporal + 1, height // spatial, width // spatial


def check_frames(frames: int, temporal: int = 4) -> None:
    if frames < 1 or (frames - 1) % temporal:
        lo, hi = nearest_frames(frames, temporal)
        near = f"{lo} or {hi}" if lo != hi else f"{lo}"
        raise ModelError(f"--frames {frames}: the Wan VAE takes {temporal}k+1 frames; nearest: {near}")


def nearest_frames(frames: int, temporal: int = 4) -> tuple[int, int]:
    """The two frame counts of the form ``temporal * k + 1`` around ``frames`` (equal ones for frames < 1)."""
    lo = max(1, (frames - 1) // temporal * temporal + 1)
    return (lo, lo + temporal) if lo <= frames else (lo, lo)
