"""The public Wan configs the dry run reads without a download, their parameter counts, and the run
defaults a config implies.

Sources: diffusers ``scripts/convert_wan_to_diffusers.py`` and the Wan team's configs (see the
comment on ``PRESETS``).
"""

from __future__ import annotations

import torch

from ..base import ModelError

TEXT_LEN = 512  # umT5 tokens; also hard-coded in diffusers' WanAttnProcessor for I2V

# Wan2.1 VAE (AutoencoderKLWan's defaults): 8x spatial, 4x temporal, z_dim 16.
_VAE21 = dict(z_dim=16, scale_factor_spatial=8, scale_factor_temporal=4, patch_size=None, base_dim=96,
              decoder_base_dim=None, is_residual=False, in_channels=3, out_channels=3)
# Wan2.2 TI2V-5B VAE (diffusers scripts/convert_wan_to_diffusers.py, vae22_diffusers_config):
# patchified 2x2 input (12 channels), residual, 16x spatial, 4x temporal, z_dim 48.
_VAE22 = dict(z_dim=48, scale_factor_spatial=16, scale_factor_temporal=4, patch_size=2, base_dim=160,
              decoder_base_dim=256, is_residual=True, in_channels=12, out_channels=12)
_COMMON = dict(patch_size=(1, 2, 2), attention_head_dim=128, text_dim=4096, freq_dim=256, cross_attn_norm=True,
               qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
# The image-to-video 14B transformers (diffusers scripts/convert_wan_to_diffusers.py, "Wan-I2V-14B-480p/720p",
# "Wan2.2-I2V-14B-720p"): the 14B shape with 36 input channels (latent 16 + mask 4 + image latents 16), 16 out.
_I2V14B = dict(_COMMON, num_attention_heads=40, num_layers=40, in_channels=36, out_channels=16, ffn_dim=13824)
# Wan2.1-I2V's image encoder (image_encoder/config.json of the diffusers folders: CLIPVisionModel, OpenCLIP's
# ViT-H/14 of laion/CLIP-ViT-H-14-laion2B-s32B-b79K): 224 px in 14 px patches, 257 tokens of width 1280.
CLIP_VIT_H14 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                    image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu", layer_norm_eps=1e-5)

# The public transformer configs (so a dry run needs no download). Sources: diffusers
# scripts/convert_wan_to_diffusers.py (get_transformer_config: "Wan-T2V-1.3B", "Wan-T2V-14B",
# "Wan2.2-T2V-A14B", "Wan2.2-TI2V-5B", and its __main__: two experts for Wan2.2 non-TI2V,
# boundary_ratio=0.875 for T2V, expand_timesteps=True for TI2V, UniPC flow_shift 3.0, or 5.0 for TI2V);
# the Wan team's configs (mlx-examples video/Wan2.1|Wan2.2/wan/configs: dims, heads, layers, ffn,
# vae_stride, A14B boundary 0.875, sample_shift / steps / guide scales). rope_max_seq_len is
# diffusers' default (1024): the converter does not set it for these models. The image-to-video models
# (WanImageToVideoPipeline folders): the converter's "Wan-I2V-14B-480p" / "-720p" (image_dim 1280,
# added_kv_proj_dim 5120; the same config for both sizes, with a CLIP image encoder) and "Wan2.2-I2V-14B-720p"
# (two experts, boundary_ratio 0.9, no image encoder); TI2V-5B above is also the image-to-video model
# (expand_timesteps; docs/i2v.md). ``image_encoder``: the CLIP vision config where there is one.
PRESETS = {
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": dict(
        transformer=dict(_COMMON, num_attention_heads=12, num_layers=30, in_channels=16, out_channels=16,
                         ffn_dim=8960),
        vae=_VAE21, text_len=TEXT_LEN, experts=1, boundary_ratio=None, expand_timesteps=False),
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": dict(
        transformer=dict(_COMMON, num_attention_heads=40, num_layers=40, in_channels=16, out_channels=16,
                         ffn_dim=13824),
        vae=_VAE21, text_len=TEXT_LEN, experts=1, boundary_ratio=None, expand_timesteps=False),
    "Wan-AI/Wan2.2-TI2V-5B-Diffusers": dict(
        transformer=dict(_COMMON, num_attention_heads=24, num_layers=30, in_channels=48, out_channels=48,
                         ffn_dim=14336),
        vae=_VAE22, text_len=TEXT_LEN, experts=1, boundary_ratio=None, expand_timesteps=True),
    "Wan-AI/Wan2.2-T2V-A14B-Diffusers": dict(
        transformer=dict(_COMMON, num_attention_heads=40, num_layers=40, in_channels=16, out_channels=16,
                         ffn_dim=13824),
        vae=_VAE21, text_len=TEXT_LEN, experts=2, boundary_ratio=0.875, expand_timesteps=False),
    "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers": dict(
        transformer=dict(_I2V14B, image_dim=1280, added_kv_proj_dim=5120), vae=_VAE21, text_len=TEXT_LEN, experts=1,
        boundary_ratio=None, expand_timesteps=False, image_encoder=CLIP_VIT_H14),
    "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers": dict(
        transformer=dict(_I2V14B, image_dim=1280, added_kv_proj_dim=5120), vae=_VAE21, text_len=TEXT_LEN, experts=1,
        boundary_ratio=None, expand_timesteps=False, image_encoder=CLIP_VIT_H14),
    "Wan-AI/Wan2.2-I2V-A14B-Diffusers": dict(
        transformer=dict(_I2V14B), vae=_VAE21, text_len=TEXT_LEN, experts=2, boundary_ratio=0.9,
        expand_timesteps=False),
}


def _cfg_get(cfg, key, default=None):
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def transformer_params(preset) -> int:
    """Parameters of one transformer of ``preset`` (a PRESETS name or entry, or a transformer config
    dict), counted on the meta device (no memory, no download)."""
    from diffusers import WanTransformer3DModel

    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ModelError(f"--model {preset}: no Wan preset of that name (known: {', '.join(PRESETS)})")
        preset = PRESETS[preset]
    cfg = preset.get("transformer", preset)
    with torch.device("meta"):
        model = WanTransformer3DModel(**cfg)
    return sum(p.numel() for p in model.parameters())


# -- defaults --------------------------------------------------------------------------------
def defaults(config: dict) -> dict:
    """Run defaults for a Wan transformer config (``config``: its config dict, or a PRESETS entry).

    Guidance block: FastVMT guides Wan2.1-1.3B at block 14 of 30 (the middle of the stack, where
    cross-frame attention is most motion-like); 40-block models take the same relative depth,
    round(14 * 40 / 30) = 19; other (tiny) models n_blocks // 2. Size: Wan's 480p, 81 frames
    (4k+1), except TI2V-5B, trained for 704x1280 at 121 frames. bf16 on GPUs. Sampling: diffusers'
    WanPipeline defaults (50 steps, CFG 5.0) and the shift its folders ship (3.0; 5.0 for TI2V);
    Wan2.2 A14B as the Wan team samples it: 40 steps, CFG 4.0 for the high-noise expert and 3.0 for
    the low-noise one (its original repo samples with shift 12.0; the diffusers folder ships 3.0); Wan2.2-I2V-A14B
    likewise with CFG 3.5 for both (the Wan team's i2v_A14B config; its shift 5.0, the converter's folder 3.0).
    Wan2.1-I2V-14B: WanPipeline's defaults as the 14B text-to-video model (the 720P model at ``--height 720
    --width 1280``: its transformer config is the 480P one's, so the defaults cannot tell them apart).
    """
    cfg = dict(config.get("transformer", config))
    experts = int(config.get("experts", 1))
    n = int(cfg.get("num_layers", 0))
    heads, in_ch = cfg.get("num_attention_heads"), cfg.get("in_channels")
    block = 14 if n == 30 else (round(14 * 40 / 30) if n == 40 else max(n // 2, 0))
    out = dict(guidance_blocks=(block,), injection_blocks=(0,), frames=81, height=480, width=832,
               dtype="bfloat16", cfg_scale=5.0, cfg_scale_2=None, steps=50, flow_shift=3.0,
               scheduler="unipc")
    if n == 30 and in_ch == 48:  # TI2V-5B
        out.update(frames=121, height=704, width=1280, flow_shift=5.0)
    if n == 40 and experts == 2:  # A14B
        image = in_ch is not None and in_ch != (cfg.get("out_channels") or in_ch)  # the I2V experts
        out.update(steps=40, cfg_scale=3.5 if image else 4.0, cfg_scale_2=3.5 if image else 3.0)
    if n not in (30, 40) or heads not in (12, 24, 40):  # tiny/test models: CPU sizes, fp32
        out.update(frames=9, height=48, width=80, dtype="float32")
    return out
