"""Wan image-to-video: the inputs diffusers' ``WanImageToVideoPipeline`` gives the transformer, computed as it
computes them (``__call__``, ``prepare_latents``, ``encode_image``; diffusers 0.42), for the loop's forwards.

Three kinds of model (:func:`kind`), read from the transformer's config and the folder's ``expand_timesteps``:

- ``"clip"``, Wan2.1-I2V-14B-480P/720P (``image_dim`` set): the ``"concat"`` inputs, plus the image's CLIP tokens
  (``image_encoder``, a ``CLIPVisionModel``, on ``image_processor``'s pixels; the second-to-last hidden states,
  ``[1, 257, 1280]``) as ``encoder_hidden_states_image``: the transformer projects them and puts them before the
  text tokens of every block's cross-attention (``attn2``, its ``add_k_proj`` / ``add_v_proj`` keys), never in the
  self-attention the AMF is read from.
- ``"concat"``, Wan2.2-I2V-A14B (``in_channels = out_channels + 4 + z_dim``, no image encoder): the noisy latent
  is concatenated in channels with a mask (4 channels: 1 on the first latent frame, 0 elsewhere) and the VAE
  latent (its mode, normalised) of the video ``[image, 0, 0, ...]`` of the run's length.
- ``"clean_first"``, Wan2.2-TI2V-5B (``expand_timesteps``, ``in_channels == out_channels``): the first latent frame
  is the image's own latent (a one-frame encode, its mode, normalised), kept clean, and its tokens get timestep 0
  (the pipeline's ``first_frame_mask``); the other tokens the step's timestep.

Each kind keeps the video tokens the self-attention sees: the patch embedding takes the concatenated channels and
gives the same ``F' x h x w`` tokens, so the guided self-attention, the AMF and the RoPE are those of the latent.
"""

from __future__ import annotations

import numpy as np
import torch

from ..base import ModelError
from .presets import _cfg_get as _get

# Frames the "concat" condition is encoded for when image_condition is not told the run's length: the pipeline's
# default num_frames and the length these models were trained on. The Wan VAE is causal in time (a latent frame
# depends on the pixel frames up to it), so a shorter run takes the first latent frames of this encode exactly
# (tested bit for bit). The loop passes the run's length, so this is for callers that do not.
CONDITION_FRAMES = 81


def kind(config, expand_timesteps: bool = False) -> str | None:
    """``"clip"``, ``"concat"``, ``"clean_first"`` or None (a text-to-video model) for a transformer config
    (module docstring); ``clean_first`` only for a folder with ``expand_timesteps``."""
    if image_model(config):
        return "clip" if _get(config, "image_dim") is not None else "concat"
    return "clean_first" if expand_timesteps else None


def image_model(config) -> bool:
    """Whether a transformer config is an image-to-video model's (it needs ``--image``): more input channels than
    it predicts (the mask and image latents), or CLIP image tokens (``image_dim``)."""
    in_ch = _get(config, "in_channels")
    out_ch = _get(config, "out_channels") or in_ch  # diffusers: out_channels or in_channels
    return _get(config, "image_dim") is not None or (in_ch is not None and in_ch != out_ch)


def check_transformer(model: str, config, vae_config) -> None:
    """:class:`ModelError` naming ``--model`` unless the transformer is a kind this family runs (module docstring)
    with channels that fit the VAE: text-to-video / TI2V ``z -> z``; I2V ``z + 4 + z -> z``."""
    z = int(_get(vae_config, "z_dim", 16) or 16)  # AutoencoderKLWan's default
    mask = int(_get(vae_config, "scale_factor_temporal", 4) or 4)
    in_ch = int(_get(config, "in_channels"))
    out_ch = int(_get(config, "out_channels") or in_ch)
    image_dim, added = _get(config, "image_dim"), _get(config, "added_kv_proj_dim")
    if _get(config, "pos_embed_seq_len") is not None:
        raise ModelError(f"--model {model}: a first-last-frame Wan transformer (pos_embed_seq_len "
                         f"{_get(config, 'pos_embed_seq_len')}); only text-to-video and image-to-video are supported")
    if (image_dim is None) != (added is None):
        raise ModelError(f"--model {model}: a Wan transformer with image_dim {image_dim} and added_kv_proj_dim "
                         f"{added}; CLIP image tokens need both")
    plain = in_ch == out_ch == z and image_dim is None
    concat = out_ch == z and in_ch == out_ch + mask + z
    if not (plain or concat):
        raise ModelError(f"--model {model}: a Wan transformer with in_channels {in_ch} and out_channels {out_ch} "
                         f"for a VAE of z_dim {z}; supported: {z} -> {z} (text-to-video, TI2V) and "
                         f"{out_ch + mask + z} -> {z} (image-to-video: latent, mask, image latents)")


def _pixels(image: np.ndarray, vae) -> torch.Tensor:
    """``uint8 [H, W, 3]`` -> ``[1, 3, H, W]`` float32 in ``[-1, 1]`` through diffusers' ``VideoProcessor`` as the
    pipeline preprocesses its image (a PIL image at the run's size: the resize is the identity)."""
    from diffusers import VideoProcessor
    from PIL import Image

    h, w = image.shape[:2]
    proc = VideoProcessor(vae_scale_factor=int(vae.config.scale_factor_spatial))
    return proc.preprocess(Image.fromarray(np.ascontiguousarray(image)), height=h, width=w).to(dtype=torch.float32)


def _normalised_mode(vae, video: torch.Tensor, device) -> torch.Tensor:
    """The VAE's posterior mode of ``video`` ``[1, 3, F, H, W]``, normalised ``(z - mean) / std`` in float32 on
    ``device``: the pipeline's ``retrieve_latents(..., sample_mode="argmax")`` and its normalisation."""
    p = next(vae.parameters())
    lat = vae.encode(video.to(p.device, p.dtype)).latent_dist.mode().to(device, torch.float32)
    z = int(vae.config.z_dim)
    mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(device, torch.float32)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(device, torch.float32)
    return (lat - mean) * inv_std


@torch.no_grad()
def first_frame_latent(vae, image: np.ndarray, device) -> torch.Tensor:
    """``[1, z, 1, h, w]`` float32: the image's own latent as one frame (TI2V's clean first frame)."""
    return _normalised_mode(vae, _pixels(image, vae).unsqueeze(2), device)


@torch.no_grad()
def concat_condition(vae, image: np.ndarray, frames: int, device) -> torch.Tensor:
    """``[1, 4 + z, F', h, w]`` float32: the mask (first latent frame 1, the others 0) and the latent of the video
    ``[image, 0 x (frames - 1)]``, as the pipeline concatenates them after the noisy latent."""
    pix = _pixels(image, vae).unsqueeze(2)
    video = torch.cat([pix, pix.new_zeros(1, 3, frames - 1, *pix.shape[-2:])], dim=2)
    lat = _normalised_mode(vae, video, device)
    # The pipeline's mask: one per pixel frame, the first repeated scale_factor_temporal times, folded into
    # channels; i.e. scale_factor_temporal channels, all ones on latent frame 0 and zeros after.
    mask = torch.zeros(1, int(vae.config.scale_factor_temporal), *lat.shape[2:], device=device)
    mask[:, :, 0] = 1
    return torch.cat([mask, lat], dim=1)


@torch.no_grad()
def clip_tokens(image_encoder, image_processor, image: np.ndarray, device) -> torch.Tensor:
    """``[1, n, image_dim]`` float32: the image encoder's second-to-last hidden states of ``image_processor``'s
    pixels (the pipeline's ``encode_image``). The encoder goes to ``device`` for the call and back where it was
    (the CPU, as ``load`` leaves it) afterwards, so it never shares the GPU with the denoising loop."""
    from PIL import Image

    if image_encoder is None or image_processor is None:
        raise ModelError("this Wan image-to-video transformer takes CLIP image tokens (image_dim set), but the model "
                         "has no image_encoder / image_processor (a Wan2.1-I2V folder holds them in image_encoder/ "
                         "and image_processor/)")
    home = next(image_encoder.parameters()).device
    image_encoder.to(device)
    try:
        pixels = image_processor(images=Image.fromarray(np.ascontiguousarray(image)), return_tensors="pt")
        out = image_encoder(**pixels.to(device), output_hidden_states=True)
        return out.hidden_states[-2].float()
    finally:
        image_encoder.to(home)


def fit_condition(condition: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """``condition`` ``[1, C, U', h, w]`` cut to the latent's ``F'`` frames (exact: the VAE is causal in time) and
    repeated over its batch; :class:`ValueError` if it is shorter or of another size."""
    b, _, f, h, w = latent.shape
    if condition.shape[2] < f or tuple(condition.shape[-2:]) != (h, w):
        raise ValueError(f"the image condition {tuple(condition.shape)} does not fit the latent {tuple(latent.shape)}")
    return condition[:, :, :f].expand(b, -1, -1, -1, -1)
