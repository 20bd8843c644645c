"""What the tiny DiT denoises: the pixels themselves, or the latents of a tiny learned frame autoencoder.

A codec maps videos ``[B, F, 3, S, S]`` in [0, 1] to the DiT's latents ``[B, F, C, s, s]`` and back:

- :class:`PixelCodec`: the video scaled to [-1, 1] (``C = 3``, ``s = S``); what the first tiny DiTs used.
- :class:`FrameAutoencoder`: a small convolutional autoencoder per frame, 4 x downsampling, ``C``
  latent channels (``s = S / 4``), its latents shifted and scaled to unit variance (as a VAE's
  ``scaling_factor`` does for CogVideoX). Frames are coded one by one (no temporal compression), so
  a video's frame ``f`` is latent frame ``f`` and the AMF's frames are the video's.

Why a learned decoder: with pixels, each 64-wide token of the DiT has to draw all 48 values of its
4 x 4 patch, and thin objects came out as blobs; here the DiT draws 8 numbers per token and the
decoder, trained once on the world's frames with noise on its input, renders them.

A model folder with a ``vae/`` subfolder (``config.json``, ``model.safetensors``) is a latent model;
without one it is a pixel model (:func:`load_codec`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn


class PixelCodec:
    """The identity codec of a pixel-space model: latents are the video in [-1, 1]."""

    channels, factor = 3, 1

    def latent_size(self, size: int) -> int:
        return size

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return video * 2 - 1

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents.clamp(-1, 1) + 1) / 2


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=(k - 1) // 2 if stride == 1 else 1)


class FrameAutoencoder(nn.Module):
    """Per-frame conv autoencoder: ``[N, 3, S, S]`` -> ``[N, C, S/4, S/4]`` -> ``[N, 3, S, S]``.

    ``shift`` and ``scale`` (buffers, set after training from the latents of world frames) make the
    latents the DiT sees zero-mean and unit-variance."""

    factor = 4

    def __init__(self, channels: int = 8, width: int = 64):
        super().__init__()
        if channels < 1 or width < 8:
            raise ValueError(f"channels must be >= 1 and width >= 8, got {channels} and {width}")
        self.channels, self.width = channels, width
        w = width
        self.encoder = nn.Sequential(
            _conv(3, w // 2), nn.SiLU(), _conv(w // 2, w, 4, 2), nn.SiLU(), _conv(w, w), nn.SiLU(),
            _conv(w, w, 4, 2), nn.SiLU(), _conv(w, w), nn.SiLU(), _conv(w, channels, 1))
        self.decoder = nn.Sequential(
            _conv(channels, w), nn.SiLU(), _conv(w, w), nn.SiLU(),
            nn.ConvTranspose2d(w, w, 4, 2, 1), nn.SiLU(), _conv(w, w), nn.SiLU(),
            nn.ConvTranspose2d(w, w // 2, 4, 2, 1), nn.SiLU(), _conv(w // 2, w // 2), nn.SiLU(), _conv(w // 2, 3))
        self.register_buffer("shift", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))

    def latent_size(self, size: int) -> int:
        if size % self.factor:
            raise ValueError(f"frame size must be a multiple of {self.factor}, got {size}")
        return size // self.factor

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Unscaled latents of ``[N, 3, S, S]`` frames in [0, 1]."""
        return self.encoder(frames * 2 - 1)

    def decode_frames(self, z: torch.Tensor) -> torch.Tensor:
        """``[N, 3, S, S]`` in [-1, 1] (unclamped) from unscaled latents."""
        return self.decoder(z)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        b, f = video.shape[:2]
        z = self.encode_frames(video.reshape(b * f, *video.shape[2:]))
        return ((z - self.shift) / self.scale).reshape(b, f, *z.shape[1:])

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        b, f = latents.shape[:2]
        x = self.decode_frames(latents.reshape(b * f, *latents.shape[2:]) * self.scale + self.shift)
        return ((x.clamp(-1, 1) + 1) / 2).reshape(b, f, *x.shape[1:])

    def config(self) -> dict:
        return {"class": "FrameAutoencoder", "channels": self.channels, "width": self.width}


def check_codec(transformer, codec) -> None:
    """Raise unless ``codec``'s latents are what ``transformer`` takes (e.g. a latent model without its codec)."""
    if codec.channels != transformer.config.in_channels:
        raise ValueError(f"codec has {codec.channels} latent channels, the transformer takes "
                         f"{transformer.config.in_channels}: pass the model folder's codec (codec.load_codec)")


def save_codec(folder, ae: FrameAutoencoder, extra: dict | None = None) -> Path:
    from safetensors.torch import save_file

    from ..atomic import atomic_path, write_text

    folder = Path(folder) / "vae"
    state = {k: v.detach().contiguous().clone() for k, v in ae.state_dict().items()}
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    write_text(folder / "config.json", json.dumps({**ae.config(), **(extra or {})}, indent=1))
    return folder


def load_codec(folder):
    """The codec of a model folder: its ``vae/`` autoencoder (eval mode, no grad), else :class:`PixelCodec`."""
    from safetensors.torch import load_file

    vae = Path(folder) / "vae"
    if not (vae / "config.json").is_file():
        return PixelCodec()
    cfg = json.loads((vae / "config.json").read_text())
    if cfg.get("class") != "FrameAutoencoder":
        raise ValueError(f"{vae / 'config.json'}: unknown codec class {cfg.get('class')!r}")
    ae = FrameAutoencoder(int(cfg["channels"]), int(cfg["width"]))
    ae.load_state_dict(load_file(str(vae / "model.safetensors")))
    if not math.isfinite(float(ae.scale)) or float(ae.scale) <= 0:
        raise ValueError(f"{vae}: latent scale must be a positive number, got {float(ae.scale)}")
    return ae.eval().requires_grad_(False)
