"""The public Wan configs the dry run reads without a download, and their parameter counts.

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

# The public transformer configs (so a dry run needs no download). Sources: diffusers
# scripts/convert_wan_to_diffusers.py (get_transformer_config: "Wan-T2V-1.3B", "Wan-T2V-14B",
# "Wan2.2-T2V-A14B", "Wan2.2-TI2V-5B", and its __main__: two experts for Wan2.2 non-TI2V,
# boundary_ratio=0.875 for T2V, expand_timesteps=True for TI2V, UniPC flow_shift 3.0, or 5.0 for TI2V);
# the Wan team's configs (mlx-examples video/Wan2.1|Wan2.2/wan/configs: dims, heads, layers, ffn,
# vae_stride, A14B boundary 0.875, sample_shift / steps / guide scales). rope_max_seq_len is
# diffusers' default (1024): the converter does not set it for these models.
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
