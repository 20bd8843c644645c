"""The public HunyuanVideo config the dry run reads without a download, and the run defaults a config implies.

Source: diffusers ``scripts/convert_hunyuan_video_to_diffusers.py``, which wrote the
``hunyuanvideo-community/HunyuanVideo`` folder: ``HunyuanVideoTransformer3DModel()`` and
``AutoencoderKLHunyuanVideo()`` with their class defaults, ``FlowMatchEulerDiscreteScheduler(shift=7.0)``,
the Llama tokenizer with ``padding_side="right"``. The transformer entries below are those defaults, and equal
the hub folder's ``transformer/config.json`` as copies of it in public code show it (diffusers 0.32.0.dev0).
"""

from __future__ import annotations

# 24 heads x 128 (3072 wide), 20 dual-stream then 40 single-stream blocks, 2x2 spatial patches, RoPE 16/56/56.
_TRANSFORMER = dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
                    num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
                    qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768,
                    rope_theta=256.0, rope_axes_dim=[16, 56, 56], image_condition_type=None)
_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=[128, 256, 512, 512],
            layers_per_block=2, norm_num_groups=32, scaling_factor=0.476986, spatial_compression_ratio=8,
            temporal_compression_ratio=4, mid_block_add_attention=True)
TEXT_LEN = 256  # Llama tokens after the template's crop (the pipeline's max_sequence_length)
PRESETS = {
    "hunyuanvideo-community/HunyuanVideo": dict(transformer=_TRANSFORMER, vae=_VAE, text_len=TEXT_LEN, shift=7.0),
}
# the depth DiTFlow and FastVMT guide at: CogVideoX-5B block 20 of 42, Wan2.1 block 14 of 30
GUIDE_DEPTH = 14 / 30


def block_count(config: dict) -> int:
    """Blocks ``--guidance-block`` indexes: the dual-stream ones (0 .. num_layers - 1), then the single-stream ones."""
    cfg = config.get("transformer", config)
    return int(cfg["num_layers"]) + int(cfg.get("num_single_layers", 0))


def defaults(config: dict) -> dict:
    """Run defaults for a HunyuanVideo transformer config (its dict, or a PRESETS entry).

    Guidance block: derived from depth, **unverified** (no real weights have run here): DiTFlow guides CogVideoX-5B
    at block 20 of 42 and FastVMT Wan2.1 at 14 of 30, both near the middle of the stack; the same relative depth
    of HunyuanVideo's 60 blocks is round(60 * 14 / 30) = 28, the 9th single-stream block (the single-stream
    blocks run from 20). Tiny models: the middle block. Sampling as ``HunyuanVideoPipeline``: 129 frames at
    720x1280, 50 steps, embedded guidance 6.0 (``--cfg``), flow-matching Euler with the folder's shift; bf16.
    """
    n = block_count(config)
    cfg = config.get("transformer", config)
    real = cfg.get("num_attention_heads") == 24 and cfg.get("attention_head_dim") == 128
    out = dict(guidance_blocks=(round(n * GUIDE_DEPTH) if real else n // 2,), injection_blocks=(0,), frames=129,
               height=720, width=1280, dtype="bfloat16", cfg_scale=6.0, cfg_scale_2=None, steps=50,
               scheduler="flow_euler", block_verified=False)
    if not real:  # tiny/test models: CPU sizes, fp32
        out.update(frames=9, height=48, width=80, dtype="float32")
    return out
