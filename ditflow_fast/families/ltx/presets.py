"""The public LTX-Video configs the dry run reads without a download, and the run defaults a config implies.

Sources (no weights read here):
- transformer: ``Lightricks/LTX-Video`` ``transformer/config.json`` (LTX-Video 0.9.0, 2B), which equals
  ``LTXVideoTransformer3DModel``'s defaults in diffusers: 28 blocks of 32 heads x 64, cross-attention width
  2048, T5 captions of 4096, 1x1 patches, 128 latent channels;
- VAE: ``Lightricks/LTX-Video`` ``vae/config.json`` (the 0.9.0 VAE, diffusers' ``get_vae_config("0.9.0")`` in
  ``scripts/convert_ltx_to_diffusers.py``): 4x4 pixel patches and three 2x spatio-temporal downsamplings,
  i.e. 32x spatial and 8x temporal compression, 128 latent channels, no timestep-conditioned decoder;
- scheduler: the ``FlowMatchEulerDiscreteScheduler`` that script saves with the pipeline: dynamic
  shifting between ``base_shift`` 0.95 at 1024 tokens and ``max_shift`` 2.05 at 4096, ``shift_terminal`` 0.1;
- text: ``google/t5-v1_1-xxl`` encoder, prompts of at most 128 tokens (``LTXPipeline``'s
  ``max_sequence_length``).
"""

from __future__ import annotations

TEXT_LEN = 128  # LTXPipeline's max_sequence_length (its T5 tokenizer's model_max_length)
FRAME_RATE = 25  # LTXPipeline.__call__'s frame_rate: it scales the temporal RoPE coordinate
SPATIAL, TEMPORAL = 32, 8  # every public LTX-Video VAE (0.9.x): 4x4 pixel patches, three 2x downsamplings
# T5EncoderModel of google/t5-v1_1-xxl (d_model 4096, d_ff 10240, 24 layers, 64 heads, vocab 32128), counted on
# the meta device; run and released before the loop
T5_XXL_ENCODER_PARAMS = 4_762_310_656

_TRANSFORMER = dict(in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32,
                    attention_head_dim=64, cross_attention_dim=2048, num_layers=28, activation_fn="gelu-approximate",
                    qk_norm="rms_norm_across_heads", norm_elementwise_affine=False, norm_eps=1e-6,
                    caption_channels=4096, attention_bias=True, attention_out_bias=True)
_VAE = dict(in_channels=3, out_channels=3, latent_channels=128, block_out_channels=[128, 256, 512, 512],
            layers_per_block=[4, 3, 3, 3, 4], spatio_temporal_scaling=[True, True, True, False], patch_size=4,
            patch_size_t=1, resnet_norm_eps=1e-6, scaling_factor=1.0, encoder_causal=True, decoder_causal=False)
SCHEDULER = dict(_class_name="FlowMatchEulerDiscreteScheduler", num_train_timesteps=1000, shift=1.0,
                 use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
                 max_image_seq_len=4096, shift_terminal=0.1)

PRESETS = {
    "Lightricks/LTX-Video": dict(transformer=_TRANSFORMER, vae=_VAE, scheduler=SCHEDULER, text_len=TEXT_LEN),
}

# DiTFlow guides CogVideoX-5B at block 20 of 42; FastVMT guides Wan2.1 at block 14 of 30. Both sit just
# below the middle of the stack (0.476 and 0.467 of the depth); LTX takes that relative depth. Not verified
# on LTX weights (none can run here): the AMF diagnostic (ditflow_fast.toyworld.diagnostics) is the check.
REFERENCE_DEPTHS = ((20, 42), (14, 30))
UNVERIFIED = ("derived from depth (DiTFlow's 20 of 42, FastVMT's 14 of 30), not verified on LTX weights")


def default_block(num_layers: int) -> int:
    """The guidance block for an LTX transformer of ``num_layers`` blocks: the peers' relative depth
    (28 blocks: round(20 * 28 / 42) = round(14 * 28 / 30) = 13); tiny test models (< 8 blocks): the middle."""
    if num_layers < 8:
        return max(num_layers // 2, 0)
    b, n = REFERENCE_DEPTHS[0]
    return round(b * num_layers / n)


def defaults(config: dict) -> dict:
    """Run defaults for an LTX transformer config (its dict, or a PRESETS entry).

    Sampling: ``LTXPipeline``'s defaults (50 steps, CFG 3.0, Euler on the folder's flow-matching sigmas with
    the pipeline's token-count shift). Size: 121 frames (8k+1) at 512x768, the size Lightricks recommends
    (multiples of 32, under 720x1280 and 257 frames). bf16 on GPUs. Tiny test models: CPU sizes, fp32."""
    cfg = dict(config.get("transformer", config))
    n = int(cfg.get("num_layers", 0))
    out = dict(guidance_blocks=(default_block(n),), injection_blocks=(0,), frames=121, height=512, width=768,
               dtype="bfloat16", cfg_scale=3.0, cfg_scale_2=None, steps=50, scheduler="flow_euler")
    if n < 8 or cfg.get("num_attention_heads", 0) * cfg.get("attention_head_dim", 0) < 512:
        out.update(frames=9, height=64, width=96, dtype="float32")
    return out
