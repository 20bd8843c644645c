"""Tiny LTX-Video components built from configs with diffusers' classes (no download), for tests and a CPU run.

``save_tiny_ltx(path)`` writes an ``LTXPipeline`` folder with ``save_pretrained`` (``model_index.json``,
``transformer/``, ``vae/``, ``scheduler/``; with ``text_encoder=True`` also ``tokenizer/`` (trained here) and
``text_encoder/`` (a 1-layer T5), so that ``--prompt`` works) plus ``prompt_embeds.safetensors`` (tensors
``prompt`` and ``negative`` ``[1, TEXT_LEN, TEXT_DIM]``). The VAE keeps the real one's geometry (4x4 pixel
patches, three 2x spatio-temporal downsamplings: 32x spatial, 8x temporal, so ``8k + 1`` frames) at 8 channels;
the scheduler is LTX-Video's. The weights are random: the output is noise-like.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .presets import SCHEDULER

TEXT_LEN, TEXT_DIM = 7, 16
Z = 8  # latent channels
HEIGHT, WIDTH, FRAMES = 64, 96, 9  # pixels; latent 2 x 2 x 3
# Not unit statistics, so that tests see the normalisation.
LATENTS_MEAN = [0.1 * (i - 3) for i in range(Z)]
LATENTS_STD = [0.5 + 0.15 * i for i in range(Z)]


def tiny_transformer(layers: int = 3, seed: int = 0):
    """An LTXVideoTransformer3DModel with 2 heads of 16 channels (RoPE over D = 32: 5 frequencies per axis and
    2 padding channels), ``layers`` blocks, 1x1 patches."""
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    return LTXVideoTransformer3DModel(in_channels=Z, out_channels=Z, patch_size=1, patch_size_t=1,
                                      num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
                                      num_layers=layers, caption_channels=TEXT_DIM).eval()


def tiny_vae(seed: int = 0, timestep_conditioning: bool = False):
    """AutoencoderKLLTXVideo at 8 channels, one layer per block, the real VAE's 32x / 8x geometry."""
    from diffusers import AutoencoderKLLTXVideo

    torch.manual_seed(seed)
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=Z, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, patch_size=4, patch_size_t=1,
        timestep_conditioning=timestep_conditioning).eval()
    with torch.no_grad():
        vae.latents_mean.copy_(torch.tensor(LATENTS_MEAN))
        vae.latents_std.copy_(torch.tensor(LATENTS_STD))
    return vae


def tiny_scheduler():
    """LTX-Video's scheduler (presets.SCHEDULER)."""
    from .sampler import make_scheduler

    return make_scheduler(SCHEDULER)


def tiny_prompt_embeds(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"prompt": torch.randn(1, TEXT_LEN, TEXT_DIM, generator=g),
            "negative": torch.randn(1, TEXT_LEN, TEXT_DIM, generator=g)}


def save_tiny_ltx(path, text_encoder: bool = False, layers: int = 3) -> Path:
    """Write a tiny LTX-Video folder with ``LTXPipeline.save_pretrained`` (see the module docstring); returns
    its path. Without ``text_encoder`` the tokenizer and text encoder entries are null."""
    from diffusers import LTXPipeline
    from safetensors.torch import save_file

    path = Path(path)
    tok = enc = None
    if text_encoder:
        from transformers import AutoTokenizer, T5EncoderModel

        from .text import save_tiny_t5

        save_tiny_t5(path / "_t5", TEXT_DIM)
        tok = AutoTokenizer.from_pretrained(str(path / "_t5" / "tokenizer"))
        enc = T5EncoderModel.from_pretrained(str(path / "_t5" / "text_encoder"))
    pipe = LTXPipeline(scheduler=tiny_scheduler(), vae=tiny_vae(), text_encoder=enc, tokenizer=tok,
                       transformer=tiny_transformer(layers))
    pipe.save_pretrained(str(path))
    if text_encoder:
        import shutil

        shutil.rmtree(path / "_t5")
    save_file(tiny_prompt_embeds(), str(path / "prompt_embeds.safetensors"))
    return path
