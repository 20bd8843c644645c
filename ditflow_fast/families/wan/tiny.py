"""Tiny Wan components built from configs (no download), for tests and a CPU smoke run.

``save_tiny_wan(path)`` writes a diffusers ``WanPipeline`` folder (``model_index.json``,
``transformer/``, ``vae/``, ``scheduler/``; no tokenizer/text encoder) plus
``prompt_embeds.safetensors`` (tensors ``prompt`` and ``negative`` ``[1, TEXT_LEN, TEXT_DIM]``);
``two_experts=True`` adds ``transformer_2/`` and ``boundary_ratio`` (the Wan2.2 A14B layout);
``wan22_vae=True`` uses a Wan2.2-style VAE (patchified, residual, 16x spatial) and sets
``expand_timesteps`` (the TI2V-5B layout). The weights are random; a transformer forward at the
tiny sizes takes about 10 ms on one CPU thread, an encode + decode of 9 frames about 0.1 s.

``save_tiny_wan_i2v(path, kind)`` writes a ``WanImageToVideoPipeline`` folder of each image-to-video kind
(:mod:`.image`): ``"wan21"`` (Wan2.1-I2V: mask and image latents in channels, a tiny ``CLIPVisionModel`` and
``CLIPImageProcessor`` in ``image_encoder/`` / ``image_processor/``, 512-token prompt embeddings as its
cross-attention needs), ``"a14b"`` (Wan2.2-I2V-A14B: the same channels, two experts, ``boundary_ratio`` 0.9, no
image encoder), ``"ti2v"`` (Wan2.2-TI2V-5B: the Wan2.2-style VAE, ``expand_timesteps``).
"""

from __future__ import annotations

from pathlib import Path

import torch

TEXT_LEN, TEXT_DIM = 7, 16
Z_DIM = 4
HEIGHT, WIDTH, FRAMES = 48, 80, 9  # pixels; latent 3 x 6 x 10, 3 x 3 x 5 patches
BOUNDARY_RATIO = 0.875
# Not unit statistics, so that tests see the normalisation.
LATENTS_MEAN = [0.1, -0.2, 0.3, 0.05]
LATENTS_STD = [0.5, 1.5, 0.8, 1.2]


I2V_BOUNDARY_RATIO = 0.9  # diffusers' converter for Wan2.2-I2V-A14B
I2V_TEXT_LEN = 512  # with CLIP image tokens, diffusers' cross-attention takes the last 512 tokens as the text
IMAGE_DIM, CLIP_SIZE, CLIP_PATCH = 24, 32, 8  # a tiny CLIP: (32 / 8)^2 + 1 = 17 image tokens of width 24


def tiny_transformer(layers: int = 3, seed: int = 0, in_channels: int = Z_DIM, out_channels: int | None = None,
                     image_dim: int | None = None):
    """A WanTransformer3DModel with 2 heads of 16 channels (RoPE split 8/4/4), ``layers`` blocks; ``out_channels``
    (default ``in_channels``) fewer than ``in_channels`` for an image-to-video model, ``image_dim``: CLIP image
    tokens of that width in cross-attention (``added_kv_proj_dim`` the inner width, as in Wan2.1-I2V)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=in_channels,
        out_channels=out_channels or in_channels, text_dim=TEXT_DIM, freq_dim=16, ffn_dim=32, num_layers=layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64,
        image_dim=image_dim, added_kv_proj_dim=None if image_dim is None else 2 * 16,
    ).eval()


def tiny_clip(seed: int = 0):
    """``(CLIPVisionModel, CLIPImageProcessor)``: 2 layers of width :data:`IMAGE_DIM` on 32 x 32 pixels in 8 x 8
    patches (17 tokens; the second-to-last hidden states are the first layer's output)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=IMAGE_DIM, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                           image_size=CLIP_SIZE, patch_size=CLIP_PATCH, projection_dim=16)
    proc = CLIPImageProcessor(size={"shortest_edge": CLIP_SIZE}, crop_size={"height": CLIP_SIZE, "width": CLIP_SIZE})
    return CLIPVisionModel(cfg).eval(), proc


def tiny_vae(seed: int = 0, wan22: bool = False):
    """AutoencoderKLWan at base_dim 2 (the smallest that builds: the resampling convs use dim // 2),
    one res block per level, 8x spatial / 4x temporal; ``wan22``: patchified (2x2) residual VAE,
    16x spatial, z_dim 6 and base_dim 4, the layout of the Wan2.2 TI2V-5B VAE."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    common = dict(dim_mult=[1, 1, 1, 1], num_res_blocks=1, attn_scales=[], temperal_downsample=[False, True, True],
                  scale_factor_temporal=4)
    if wan22:
        z = 6
        return AutoencoderKLWan(base_dim=4, z_dim=z, is_residual=True, in_channels=12, out_channels=12, patch_size=2,
                                scale_factor_spatial=16, latents_mean=[0.1 * (i - 2) for i in range(z)],
                                latents_std=[0.5 + 0.2 * i for i in range(z)], **common).eval()
    return AutoencoderKLWan(base_dim=2, z_dim=Z_DIM, latents_mean=LATENTS_MEAN, latents_std=LATENTS_STD,
                            scale_factor_spatial=8, **common).eval()


def tiny_scheduler(flow_shift: float = 3.0):
    """The scheduler diffusers' Wan folders ship: UniPC on flow sigmas."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                                   flow_shift=flow_shift)


def tiny_prompt_embeds(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"prompt": torch.randn(1, TEXT_LEN, TEXT_DIM, generator=g),
            "negative": torch.randn(1, TEXT_LEN, TEXT_DIM, generator=g)}


def save_tiny_wan(path, two_experts: bool = False, wan22_vae: bool = False, layers: int = 3) -> Path:
    """Write a tiny Wan diffusers folder with ``WanPipeline.save_pretrained`` (see the module
    docstring; the pipeline takes no tokenizer or text encoder: their entries are null); returns its path."""
    from diffusers import WanPipeline
    from safetensors.torch import save_file

    path = Path(path)
    vae = tiny_vae(wan22=wan22_vae)
    z = vae.config.z_dim
    pipe = WanPipeline(
        tokenizer=None, text_encoder=None, vae=vae, scheduler=tiny_scheduler(5.0 if wan22_vae else 3.0),
        transformer=tiny_transformer(layers, seed=0, in_channels=z),
        transformer_2=tiny_transformer(layers, seed=1, in_channels=z) if two_experts else None,
        boundary_ratio=BOUNDARY_RATIO if two_experts else None, expand_timesteps=bool(wan22_vae))
    pipe.save_pretrained(str(path))
    save_file(tiny_prompt_embeds(), str(path / "prompt_embeds.safetensors"))
    return path


def save_tiny_wan_i2v(path, kind: str = "wan21", layers: int = 3) -> Path:
    """Write a tiny ``WanImageToVideoPipeline`` folder of ``kind`` ``"wan21"``, ``"a14b"`` or ``"ti2v"`` (module
    docstring) with its ``save_pretrained``, plus ``prompt_embeds.safetensors``; returns its path. No tokenizer or
    text encoder (null entries), as :func:`save_tiny_wan`."""
    from diffusers import WanImageToVideoPipeline
    from safetensors.torch import save_file

    if kind not in ("wan21", "a14b", "ti2v"):
        raise ValueError(f"kind must be 'wan21', 'a14b' or 'ti2v', got {kind!r}")
    path = Path(path)
    vae = tiny_vae(wan22=kind == "ti2v")
    z = vae.config.z_dim
    if kind == "ti2v":  # the text-to-video transformer; the image enters as a clean first latent frame
        experts = [tiny_transformer(layers, seed=0, in_channels=z)]
    else:  # latent, mask (scale_factor_temporal channels) and image latents in, the latent's channels out
        in_ch = z + vae.config.scale_factor_temporal + z
        experts = [tiny_transformer(layers, seed=s, in_channels=in_ch, out_channels=z,
                                    image_dim=IMAGE_DIM if kind == "wan21" else None)
                   for s in ((0, 1) if kind == "a14b" else (0,))]
    encoder, processor = tiny_clip() if kind == "wan21" else (None, None)
    pipe = WanImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=vae, scheduler=tiny_scheduler(5.0 if kind == "ti2v" else 3.0),
        image_processor=processor, image_encoder=encoder, transformer=experts[0],
        transformer_2=experts[1] if len(experts) > 1 else None,
        boundary_ratio=I2V_BOUNDARY_RATIO if kind == "a14b" else None, expand_timesteps=kind == "ti2v")
    pipe.save_pretrained(str(path))
    embeds = tiny_prompt_embeds()
    if kind == "wan21":  # zero-padded to 512 tokens, as the pipeline's encode_prompt pads umT5's output
        embeds = {k: torch.cat([v, v.new_zeros(1, I2V_TEXT_LEN - v.shape[1], v.shape[2])], dim=1)
                  for k, v in embeds.items()}
    save_file(embeds, str(path / "prompt_embeds.safetensors"))
    return path
