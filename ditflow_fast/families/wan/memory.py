"""Predicted peak GPU memory of a guided Wan run, by component, next to the research procedure's.

The same accounting as the CogVideoX model (:mod:`ditflow_fast.families.cogvideox.memory`; the
:class:`~ditflow_fast.families.estimate.Estimate` and its table are shared), with Wan's differences:

- **tokens.** Wan's self-attention sees video tokens only: ``T = N = F'*h*w`` (patch ``(1, 2, 2)``
  over the Wan VAE's latent: 4x temporal, 8x spatial and ``z_dim`` 16 for Wan2.1 / A14B, 16x and 48
  for TI2V-5B). Text (512 umT5 tokens) enters through cross-attention; its projected embeddings and
  the per-block cross-attention K/V are counted in units of ``L*D*b`` (small next to ``N*D*b``).
- **weights.** One transformer (:func:`ditflow_fast.families.wan.presets.transformer_params`, exact, meta
  device) and the VAE (``AutoencoderKLWan`` from the preset's VAE config, counted on the meta device; float32,
  as WanFamily.load keeps it whatever the run's dtype).
  Wan2.2 A14B has two experts but only one is on the GPU at a time (the other waits on the CPU,
  :func:`ditflow_fast.families.offload.expert_swap`), so its weights are one expert's. The umT5-XXL
  encoder (5.7 B parameters) has been run and released before the loop
  (:func:`ditflow_fast.families.wan.text.encode_prompts_umt5`); it never shares the GPU with it.
  ``offload``: ``"none"`` (all resident), ``"model"`` (the VAE on the CPU except while it runs:
  during the loop only the transformer is on the GPU), ``"group"`` (diffusers' block-level group
  offloading of the transformer, one block per group, VAE as in ``"model"``: resident are the
  non-block parameters plus two blocks, the running one and the one prefetched / kept by a backward).
- **activations,** in units of one ``[N, D]`` tensor (``N*D*b``) and one ``[N, ffn_dim]`` tensor,
  constants measured with torch's memory timeline on CPU runs of Wan-shaped tiny transformers
  (``tests/families/test_wan_memory.py`` re-measures them on another shape). They are larger than
  CogVideoX's because Wan's blocks upcast to float32 around their three LayerNorms and the
  modulations (``hidden.float()``): in bf16 each saved LayerNorm input is two units. Separate
  constants for 2-byte (bf16/fp16) and 4-byte (fp32) runs.
- **RoPE tables** ``(cos, sin)`` ``[N, d]`` float32 in every dtype; TI2V-5B's per-token timesteps
  (``expand_timesteps``) add a per-token ``[N, 6, D]`` modulation (measured constants).
- the AMF working sets, captured q/k and the optimised tensor with Adam as for CogVideoX.
- ``offload_activations`` (:func:`ditflow_fast.families.offload.activation_offload`, torch's
  ``save_on_cpu``): the checkpointed block inputs wait in host memory (``(g + 1) [N, D]``, pinned;
  reported, not counted), and the block being back-propagated gets its input back as a fresh copy:
  measured constants ``*_host``. ``ffn_chunks`` (:mod:`ditflow_fast.families.wan.chunking`; None:
  automatic): the recomputed block's tail (after the self-attention: norm2, cross-attention, norm3,
  FFN, residuals) in token slices, measured constants ``tail*`` (the block then peaks in its
  self-attention, or in one slice's backward). Both apply with checkpointing only (the loop chunks only then;
  activation offload refuses ``--no-checkpointing``).

- **image-to-video** (:mod:`ditflow_fast.families.wan.image`; rows only for these models): the mask and image
  latents the transformer takes in channels (Wan2.1-I2V, Wan2.2-I2V-A14B: the generation's and the reference's
  condition, held through the run, and the concatenated input; small); Wan2.1-I2V's CLIP image tokens (257) in
  every block's cross-attention, in units of ``n_img*D*b`` as the text, and the cross-attention's second SDPA (the
  image keys) keeping its ``[N, D]`` output for the backward (``IMAGE_ATTN``, measured). The CLIP image encoder
  (631 M parameters, float32) runs before the loop next to the VAE and goes back to the CPU: the table's note
  gives that peak (``before_loop_bytes``); TI2V-5B's clean first frame changes nothing counted here.

What the CPU cannot show (as for CogVideoX): the CUDA context and cuBLAS workspaces (about 0.5-1 GB)
and allocator fragmentation come on top of both columns.
"""

from __future__ import annotations

import functools
import json

from ..base import ModelError, foreign_vae_note
from ..estimate import (
    GROUP_RESIDENT_BLOCKS,
    Estimate,
    add_guidance_blocks,
    blocks_label,
    check_block,
    check_options,
    config_json,
    meta_counts,
)
from ..folders import folder_configs
from . import image as i2v
from .chunking import resolve_chunks
from .geometry import latent_shape
from .presets import _VAE21, CLIP_VIT_H14, PRESETS, TEXT_LEN, defaults, transformer_params

# Activation constants, measured (torch.profiler memory timeline, export_memory_timeline(device="cpu"),
# peak minus start of one steady-state guided iteration: WanFamily.run_until truncated after block g
# with q/k captured, a dense gradient into q and k, backward) on WanTransformer3DModel with 4 heads x 64,
# ffn_dim 2x and 6x D, 3 latent frames of 10 x 14 patches, 16 text tokens, g = 2 and 4, after
# subtracting the components modelled on their own (RoPE tables, captured q/k and grads, text).
# Units: one [N, D] tensor of the run's element size (*_FFN: one [N, ffn_dim] tensor). CPU SDPA is a
# flash kernel keeping a log-sum-exp, as flash / memory-efficient SDPA on a GPU. The raw numbers:
# bf16 checkpointed 34.94 U (g 2, ffn 2x), 36.99 (g 4), 41.92 (ffn 6x); without checkpointing 60.10,
# 100.62, 68.10; fp32 checkpointed 23.75, 25.77, 34.74; without 39.84, 68.16, 51.82.
# Predicted on another shape (6 heads x 48, ffn 3x, 2 frames of 12 x 16, 24 text tokens, g = 3), bf16:
# 37.56 vs 36.88 U measured with checkpointing, 83.47 vs 83.38 U without.
#
# Activation offload and the chunked FFN, measured the same way (same shapes, g = 2 and 4, ffn 2x, 6x,
# 8x, 12x, 1 to 12 slices; the offloaded run with a saved-tensor hook that keeps the packed copies in
# numpy memory, which the profiler does not see, as host memory is not GPU memory, and unpacks into a
# tracked tensor, the host-to-device copy). Offloaded, the peak no longer grows with g (+0.01 U per
# block) and the recomputed block costs ``*_host``. With slices the recomputed block peaks either
# outside the FFN (``chunked + chunked_per_slice * chunks``, where the FFN width no longer matters) or
# in one slice's backward (``chunked_ffn_phase + chunked_ffn * ffn/chunks + chunked_ffn_per_slice * chunks``,
# ffn/chunks in [N, D] units of the slice's [N/chunks, ffn_dim]). Raw bf16 numbers (U, less modelled
# components and, unoffloaded, the g + 1 inputs): 1 slice 26.8 / 33.8 (ffn 2x / 6x); 2 slices 24.97 (2x),
# 26.90 (6x), 29.90 (8x), 35.90 (12x); 3: 25.04 (6x), 30.26 (12x); 4: 25.11 (2x, 6x); 6: 25.25; 8: 25.39
# (6x, 12x); 12: 25.67; offloaded 1 slice 28.77 / 34.77; 2 slices 26.91, 28.41, 30.78, 36.78; 3: 26.98,
# 31.14; 4: 27.05; 6: 27.19; 8: 27.33; 12: 27.61. fp32: 1 slice 16.14 / 27.12, 2 slices 14.17 / 20.17,
# 4: 13.28 / 16.19, 6 (6x): 14.88; offloaded 18.14 / 29.07, 16.12 / 22.12, 15.28 / 18.14, 16.83.
# (Those are scope="ffn", kept for :func:`recompute_units`; the loop now slices the block's tail.)
#
# The block's tail in slices (chunking scope "tail", what the loop installs), measured the same way (g = 2,
# ffn 2x / 6x / 12x, 1 to 16 slices). The recomputed block peaks either in its self-attention, outside the
# slices (``tail + tail_per_slice * chunks``: the width no longer matters), or in one slice's backward
# (``tail_phase + (tail_fixed + tail_ffn * ffn) / chunks + tail_phase_per_slice * chunks``: one slice of
# the norms' float32 copies, cross-attention and FFN; for FFNs wider than 6x its hidden layer takes over:
# ``tail_wide + tail_wide_ffn * ffn / chunks + tail_wide_per_slice * chunks``). Raw numbers (U, as above):
# bf16 2 slices 18.26 / 22.24 / 31.24 (2x / 6x / 12x), 4: 15.54 / 16.78 / 21.02, 8: 15.64 / 15.64 /
# 16.03, 16: 15.83; offloaded 2: 20.18 / 24.16 / 33.16, 4: 16.46 / 18.70 / 22.94, 8: 16.52 / 16.52 /
# 17.95, 16: 16.71. fp32 2 slices 11.59 / 16.59 / 25.59, 4: 9.35 / 11.85 / 16.35, 8: 9.14 / 9.54 /
# 11.81, 16: 9.33; offloaded 2: 13.58 / 18.58 / 27.58, 4: 11.34 / 13.84 / 18.35, 8: 10.48 / 11.54 / 13.81.
ACT = {
    2: dict(ckpt_input=1.0, ckpt_recompute=23.3, ckpt_recompute_ffn=1.75,  # bf16 / fp16
            ckpt_recompute_host=25.8, ckpt_recompute_ffn_host=1.5,
            chunked=24.83, chunked_host=26.77, chunked_per_slice=0.07,
            chunked_ffn_phase=17.18, chunked_ffn_phase_host=18.36, chunked_ffn=3.0, chunked_ffn_per_slice=0.36,
            tail=15.44, tail_host=16.33, tail_per_slice=0.024,
            tail_phase=10.345, tail_phase_host=12.265, tail_fixed=11.2, tail_ffn=1.99, tail_phase_per_slice=0.1625,
            tail_wide=10.58, tail_wide_host=12.50, tail_wide_ffn=3.43, tail_wide_per_slice=0.04,
            block=18.2, block_ffn=1.0, partial_and_backward=14.5,
            expand_ckpt=22.0, expand_fixed=17.1, expand_block=16.0,
            emb_ckpt=1.4, emb_fixed=-6.6, emb_block=2.0),
    4: dict(ckpt_input=1.0, ckpt_recompute=10.6, ckpt_recompute_ffn=2.75,  # fp32
            ckpt_recompute_host=12.7, ckpt_recompute_ffn_host=2.75,
            chunked=10.6, chunked_host=12.44, chunked_per_slice=0.0,
            chunked_ffn_phase=10.6, chunked_ffn_phase_host=12.44, chunked_ffn=3.0, chunked_ffn_per_slice=0.32,
            tail=8.95, tail_host=10.29, tail_per_slice=0.024,
            tail_phase=7.11, tail_phase_host=9.10, tail_fixed=3.96, tail_ffn=2.5, tail_phase_per_slice=0.0,
            tail_wide=6.95, tail_wide_host=8.94, tail_wide_ffn=3.10, tail_wide_per_slice=0.027,
            block=11.1, block_ffn=1.5, partial_and_backward=7.0,
            # TI2V's per-token modulation and --opt-mode emb measured in bf16 only; used in fp32 too (units)
            expand_ckpt=22.0, expand_fixed=17.1, expand_block=16.0,
            emb_ckpt=1.4, emb_fixed=-6.6, emb_block=2.0),
}
# Text, in [L, D] units (analytic, checked against the measured growth with 16 -> 256 tokens: +3.0
# with checkpointing, +4.0 without at g = 2): the projected prompt (1, held through the forward),
# cross-attention K/V kept by SDPA per saved block (2) or for the recomputed block (2).
TEXT_FIXED, TEXT_PER_BLOCK = 1, 2
# Wan2.1-I2V's cross-attention attends to the image tokens in a second SDPA and keeps its [N, D] output for the
# backward: per recomputed block (checkpointing), per saved block (without), and within one token slice of the
# block's tail. Measured (memory timeline, as above: 8 heads x 32, ffn 3x, N = 384 / 576 tokens, 65 / 257 image
# tokens, 512 text tokens, g = 3, bf16 and fp32): the I2V iteration less the same model without image tokens is
# 1.0625 U + 3 n_img units checkpointed, 3 x 1.0625 U + 6 n_img units without checkpointing (the model: 7), and
# 1 n_img unit with the tail in 3 or 6 slices (the peak then stays in the self-attention; the model: 3).
IMAGE_ATTN = 1.0625


def _entry(preset_or_config) -> dict:
    """A PRESETS-shaped entry (``transformer``, ``vae``, ``text_len``, ``experts``, ``expand_timesteps``, and
    ``image_encoder`` for a transformer taking CLIP image tokens: ViT-H/14's config unless given)."""
    if isinstance(preset_or_config, str):
        if preset_or_config not in PRESETS:
            raise ModelError(f"--model {preset_or_config}: no Wan preset of that name (known: {', '.join(PRESETS)})")
        return PRESETS[preset_or_config]
    if "transformer" in preset_or_config:
        return preset_or_config
    entry = dict(transformer=preset_or_config, vae=_VAE21, text_len=TEXT_LEN, experts=1, expand_timesteps=False)
    if preset_or_config.get("image_dim") is not None:
        entry["image_encoder"] = CLIP_VIT_H14
    return entry


@functools.lru_cache(maxsize=8)
def clip_params(encoder_json: str) -> int:
    """Parameters of a ``CLIPVisionModel`` config, counted on the meta device."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    with torch.device("meta"):
        model = CLIPVisionModel(CLIPVisionConfig(**json.loads(encoder_json)))
    return sum(p.numel() for p in model.parameters())


def image_tokens(encoder: dict | None) -> int:
    """The CLIP tokens of an image encoder config: ``(image_size / patch_size)^2`` patches and the class token."""
    enc = encoder or CLIP_VIT_H14
    return (int(enc["image_size"]) // int(enc["patch_size"])) ** 2 + 1


@functools.lru_cache(maxsize=32)
def _counts(transformer_json: str) -> tuple[int, int, int]:
    """(all parameters, parameters of one block, blocks) of a Wan transformer config, on the meta device."""
    import torch
    from diffusers import WanTransformer3DModel

    cfg = json.loads(transformer_json)
    if "patch_size" in cfg:
        cfg["patch_size"] = tuple(cfg["patch_size"])
    with torch.device("meta"):
        model = WanTransformer3DModel(**cfg)
    total = sum(p.numel() for p in model.parameters())
    assert total == transformer_params(cfg)
    return total, sum(p.numel() for p in model.blocks[0].parameters()), len(model.blocks)


def recompute_units(bytes_per_elem: int, ffn_units: float, *, offload_activations: bool = False,
                    chunks: int = 1, scope: str = "tail", image_attn: bool = False) -> float:
    """The "one block recomputed + backward" term in ``[N, D]`` units, ``ffn_units = ffn_dim / D``;
    ``scope``: what is sliced (:func:`ditflow_fast.families.wan.chunking.install`); ``image_attn``: the
    cross-attention also attends to CLIP image tokens (:data:`IMAGE_ATTN`, in the tail's slices when sliced)."""
    c, h = ACT[bytes_per_elem], "_host" if offload_activations else ""
    img = IMAGE_ATTN if image_attn else 0.0
    if chunks <= 1:
        return c["ckpt_recompute" + h] + c["ckpt_recompute_ffn" + h] * ffn_units + img
    if scope == "tail":
        return max(c["tail" + h] + c["tail_per_slice"] * chunks,
                   c["tail_phase" + h] + (c["tail_fixed"] + c["tail_ffn"] * ffn_units + img) / chunks
                   + c["tail_phase_per_slice"] * chunks,
                   c["tail_wide" + h] + (c["tail_wide_ffn"] * ffn_units + img) / chunks
                   + c["tail_wide_per_slice"] * chunks)
    return max(c["chunked" + h] + c["chunked_per_slice"] * chunks,
               c["chunked_ffn_phase" + h] + c["chunked_ffn"] * ffn_units / chunks + c["chunked_ffn_per_slice"] * chunks)


def estimate_wan(preset_or_config, *, frames: int, height: int, width: int, guidance_block: int,
                 bytes_per_elem: int = 2, opt_mode: str = "latent", checkpointing: bool = True,
                 offload: str = "none", experts: int = 1, offload_activations: bool = False,
                 ffn_chunks: int | None = None) -> Estimate:
    """Predicted peak bytes by component of a guided Wan run (see the module docstring).

    ``preset_or_config``: a :data:`ditflow_fast.families.wan.presets.PRESETS` name or entry, or a bare
    transformer config dict (then the Wan2.1 VAE is assumed). ``experts``: how many experts the model
    has (a preset entry says it itself); it does not change the prediction, since only one expert is
    ever on the GPU (the other waits on the CPU: host memory, not counted here).
    ``offload_activations``: the checkpointed block inputs in host memory (``host_bytes`` of the
    result: what they take there). ``ffn_chunks``: the recomputed block's tail in token slices (None:
    automatic, :func:`ditflow_fast.families.wan.chunking.resolve_chunks`; 0/1: off); the slice count
    used is ``ffn_chunks_used`` of the result. Both need ``checkpointing``."""
    del experts  # one expert resident whatever the count
    check_options(offload=offload, opt_mode=opt_mode, bytes_per_elem=bytes_per_elem, constants=ACT,
                  offload_activations=offload_activations, checkpointing=checkpointing)
    entry = _entry(preset_or_config)
    cfg, vae_cfg = entry["transformer"], entry.get("vae", _VAE21)
    _, z, lat_f, lh, lw = latent_shape(vae_cfg, cfg, frames, height, width)
    pt, ph, pw = tuple(cfg.get("patch_size", (1, 2, 2)))
    ff, hh, ww = lat_f // pt, lh // ph, lw // pw
    heads, hd = cfg["num_attention_heads"], cfg["attention_head_dim"]
    dim, ffn, b = heads * hd, cfg["ffn_dim"], bytes_per_elem
    text_len, text_dim = int(entry.get("text_len", TEXT_LEN)), cfg.get("text_dim", 4096)
    total, per_block, n_blocks = _counts(config_json(cfg))
    check_block(guidance_block, n_blocks)
    image_dim = cfg.get("image_dim")
    n_img = image_tokens(entry.get("image_encoder")) if image_dim is not None else 0
    g, c = guidance_block, ACT[b]
    n = ff * hh * ww
    chunks = resolve_chunks(ffn_chunks, n, ffn) if checkpointing else 1
    u, uf, ul = n * dim * b, n * ffn * b, text_len * dim * b

    resident = total if offload != "group" else total - n_blocks * per_block + GROUP_RESIDENT_BLOCKS * per_block
    vae = 0 if offload != "none" else meta_counts("AutoencoderKLWan", config_json(vae_cfg))[0]
    # WanFamily.load keeps the Wan VAE in float32 whatever the run's dtype (diffusers' advice for its decoding)
    base = {"transformer weights": resident * b, "VAE weights": vae * 4}
    expand = bool(entry.get("expand_timesteps", False))
    emb = opt_mode == "emb"
    if checkpointing:
        def ckpt_acts(host, k):
            rec = recompute_units(b, ffn / dim, offload_activations=host, chunks=k, image_attn=n_img > 0)
            return {"checkpointed block inputs": 0 if host else round((g + 1) * c["ckpt_input"] * u),
                    "one block recomputed + backward": round(rec * u + (c["expand_ckpt"] * u if expand else 0)
                                                             + (c["emb_ckpt"] * u if emb else 0))}
        acts, plain = ckpt_acts(offload_activations, chunks), ckpt_acts(False, 1)  # research code: neither
        text_blocks = 1
    else:
        units = g * c["block"] + c["partial_and_backward"] + (g * IMAGE_ATTN if n_img else 0)
        if expand:
            units += c["expand_fixed"] + g * c["expand_block"]
        if emb:
            units += c["emb_fixed"] + g * c["emb_block"]
        acts = {"block activations (no ckpt)": round(units * u + g * c["block_ffn"] * uf)}
        plain = dict(acts)
        text_blocks = g
    cells = lat_f * lh * lw
    for a in (acts, plain):
        a["text embeds + cross-attn K/V"] = (TEXT_FIXED + TEXT_PER_BLOCK * text_blocks) * ul + text_len * text_dim * b
        if n_img:  # the projected tokens and their K/V as the text's; the CLIP tokens of the image and the reference
            a["CLIP image tokens in cross-attn"] = ((TEXT_FIXED + TEXT_PER_BLOCK * text_blocks) * n_img * dim * b
                                                    + 2 * n_img * image_dim * b)
        if i2v.image_model(cfg):  # the image's and the reference's condition, and the concatenated input
            cond = int(cfg["in_channels"]) - int(cfg.get("out_channels") or z)
            a["image condition (in channels)"] = (2 * cond + int(cfg["in_channels"])) * cells * b
        a["RoPE tables (fp32)"] = 2 * n * hd * 4
    est = Estimate.build(base, acts, plain, {"captured q, k and grads": 4 * n * dim * b}, heads=heads,
                         grid=(ff, hh, ww), bytes_per_elem=b,
                         opt_elems=lat_f * z * lh * lw if opt_mode == "latent" else 4 * n * hd)
    # host memory of the offloaded block inputs (pinned); the shared arguments once
    est.host_bytes = (g + 1) * u + (TEXT_FIXED * ul + 6 * dim * 4 * (n if expand else 1)) if offload_activations else 0
    est.ffn_chunks_used = chunks
    # before the loop (image_condition): the CLIP encoder in float32 next to the VAE, as WanFamily.load gives them
    est.image_encoder_bytes = clip_params(json.dumps(entry["image_encoder"], sort_keys=True)) * 4 if n_img else 0
    est.before_loop_bytes = (est.image_encoder_bytes + meta_counts("AutoencoderKLWan", config_json(vae_cfg))[0] * 4
                             if n_img else 0)
    return est


def dry_run_table(model_id_or_preset, frames: int | None = None, height: int | None = None, width: int | None = None,
                  *, guidance_block: int | None = None, guidance_blocks=None, bytes_per_elem: int | None = None,
                  dtype: str | None = None, opt_mode: str = "latent", checkpointing: bool = True,
                  offload: str = "none", offload_activations: bool | None = None,
                  ffn_chunks: int | None = None) -> str:
    """The text ``ditflow-fast transfer --dry-run`` prints for a Wan model: a header line (model,
    frames, size, guidance block, offload) and the table. Unset sizes, block and dtype come from
    :func:`.presets.defaults`. ``model_id_or_preset``: a preset name, a PRESETS-shaped entry, or a
    local Wan folder (its ``transformer/config.json`` and ``vae/config.json`` are read).
    ``guidance_blocks`` (the run's list: the deepest sets the activations, each keeps its q/k) or
    ``guidance_block``; ``dtype``
    (``"bfloat16"``, ``"float16"``, ``"float32"``) or ``bytes_per_elem``. ``offload_activations``: None
    (the command's default) means on with ``offload="group"`` and checkpointing; ``ffn_chunks`` as
    :func:`estimate_wan`."""
    entry = _entry(model_id_or_preset) if not isinstance(model_id_or_preset, str) or \
        model_id_or_preset in PRESETS else memory_config(model_id_or_preset)
    d = defaults(entry)
    frames, height, width = frames or d["frames"], height or d["height"], width or d["width"]
    blocks = [int(guidance_block)] if guidance_block is not None else list(guidance_blocks or d["guidance_blocks"])
    block = max(blocks)
    dtype = str(dtype or d["dtype"]).replace("torch.", "")
    b = bytes_per_elem or (4 if dtype == "float32" else 2)
    label = dtype if bytes_per_elem is None else f"{b}-byte elements"
    if offload_activations is None:
        offload_activations = offload == "group" and checkpointing
    est = add_guidance_blocks(
        estimate_wan(entry, frames=frames, height=height, width=width, guidance_block=block, bytes_per_elem=b,
                     opt_mode=opt_mode, checkpointing=checkpointing, offload=offload,
                     offload_activations=offload_activations, ffn_chunks=ffn_chunks), blocks)
    name = model_id_or_preset if isinstance(model_id_or_preset, str) else "Wan (config)"
    experts = int(entry.get("experts", 1))
    head = (f"{name}: {frames} frames, {height}x{width}, {blocks_label(blocks)}, "
            f"{label}, opt-mode {opt_mode}, checkpointing {'on' if checkpointing else 'off'}, "
            f"offload {offload}" + (f", {experts} experts (one on the GPU at a time)" if experts > 1 else ""))
    if offload == "group":
        head += f"\n(transformer weights: non-block parameters + {GROUP_RESIDENT_BLOCKS} blocks resident)"
    if offload_activations:
        head += f"\n(activations offloaded: the checkpointed block inputs take {est.host_bytes / 2**30:.2f} GiB of " \
                "pinned host memory)"
    if est.ffn_chunks_used > 1:
        head += (f"\n(recomputed block's tail (norm2, cross-attention, norm3, FFN) in {est.ffn_chunks_used} "
                 "token slices)")
    note = "(umT5 encoder run and released before the loop; CUDA context and fragmentation not included)"
    if isinstance(model_id_or_preset, str) and model_id_or_preset not in PRESETS:
        note += foreign_vae_note(model_id_or_preset, "AutoencoderKLWan")
    return f"{head}\n{est.table()}\n{note}" + "".join(f"\n{line}" for line in image_notes(entry, est))


def image_notes(entry: dict, est: Estimate) -> list[str]:
    """The dry run's image-to-video lines: what the image gives the model and what runs before the loop."""
    cfg = entry["transformer"]
    if not i2v.image_model(cfg):
        if entry.get("expand_timesteps"):
            return ["(with --image: the first latent frame is the image's latent, kept clean at timestep 0, as "
                    "Wan2.2-TI2V's pipeline does; no image encoder, nothing more on the GPU)"]
        return []
    lines = [f"(image-to-video: --image required; the mask and image latents enter in channels "
             f"({cfg['in_channels']} in, {cfg.get('out_channels')} out), the tokens stay the latent's; before the loop "
             "the VAE encodes [image, then empty frames to the run's length] for the image and for the "
             "reference's first frame, its working memory not counted, as for the reference video)"]
    if est.image_encoder_bytes:
        gib = 2 ** 30
        peak = "above" if est.before_loop_bytes > est.total else "below"
        lines.append(f"(CLIP image encoder: {est.image_encoder_bytes / gib:.2f} GiB in float32, run before the loop "
                     f"next to the VAE ({est.before_loop_bytes / gib:.2f} GiB together, {peak} the loop's peak), then "
                     f"back on the CPU; its {image_tokens(entry.get('image_encoder'))} tokens enter the "
                     "cross-attention only)")
    return lines


def memory_config(model: str) -> dict:
    """A PRESETS-shaped entry for a preset name or a local Wan folder (no weights read)."""
    if model in PRESETS:
        return PRESETS[model]
    from pathlib import Path

    # another codec in vae/ (the toy world's) counts as Wan2.1's VAE, and --dry-run says so
    tr, vae = folder_configs(model, _VAE21, "AutoencoderKLWan", f"Wan presets: {', '.join(PRESETS)}")
    root = Path(model).expanduser()
    index = {}
    if (root / "model_index.json").is_file():
        index = json.loads((root / "model_index.json").read_text())
    two = (root / "transformer_2" / "config.json").is_file()
    entry = dict(transformer=tr, vae=vae, text_len=TEXT_LEN, experts=2 if two else 1,
                 boundary_ratio=index.get("boundary_ratio"), expand_timesteps=bool(index.get("expand_timesteps")))
    if tr.get("image_dim") is not None:  # the folder's CLIP config (ViT-H/14's without one)
        enc = root / "image_encoder" / "config.json"
        keys = set(CLIP_VIT_H14)
        entry["image_encoder"] = ({k: v for k, v in json.loads(enc.read_text()).items() if k in keys}
                                  if enc.is_file() else CLIP_VIT_H14)
    return entry
