"""Predicted peak GPU memory of a guided LTX-Video run, by component, next to the research procedure's.

The accounting of the Wan model (:mod:`ditflow_fast.families.wan.memory`), with LTX's differences:

- **tokens.** ``N = F'*h*w`` video tokens (1x1 patches over the 32x / 8x latent: 121 frames at 512x768 give
  16 x 16 x 24 = 6144); self-attention sees video tokens only. Text (at most 128 T5 tokens) enters through
  cross-attention: the projected prompt and per block its K/V, in ``[L, D]`` units.
- **weights.** The transformer (counted exactly on the meta device) and ``AutoencoderKLLTXVideo`` from the
  preset's VAE config, in the run's dtype (the family loads both so). The T5-XXL encoder has been run and
  released before the loop: its own peak (its weights, 4.76 B parameters) is printed apart (:func:`notes`).
  ``offload``: ``"model"`` (VAE on the CPU during the loop), ``"group"`` (one block per group: the
  non-block parameters plus two blocks resident).
- **activations,** in units of one ``[N, D]`` tensor (``N*D*b``), constants measured with torch's memory timeline
  on CPU runs of LTX-shaped tiny transformers (tests/families/test_ltx_memory.py re-measures them on another
  shape). LTX's blocks are simpler than Wan's (RMSNorm without affine, a 4x GELU FFN), so the FFN width is part
  of the constants.
- **RoPE tables** ``(cos, sin)`` ``[N, D]`` float32 over the full width ``D`` (LTX rotates before the heads
  split), and in emb mode the optimised ``[2, 2, N, D]`` tables with Adam.
- the AMF working sets and captured q/k as for the other families.

What the CPU cannot show: the CUDA context and cuBLAS workspaces (about 0.5-1 GB) and allocator fragmentation
come on top of both columns; the VAE decode after the loop is not in the table (:func:`notes`).
"""

from __future__ import annotations

from ..base import ModelError
from ..estimate import GROUP_RESIDENT_BLOCKS, Estimate, check_block, check_options, config_json, meta_counts
from ..folders import folder_configs
from .geometry import latent_shape
from .presets import _VAE, PRESETS, SCHEDULER, T5_XXL_ENCODER_PARAMS, TEXT_LEN, UNVERIFIED

# Activation constants in [N, D] units of the run's element size, measured (torch.profiler memory timeline,
# export_memory_timeline(device="cpu"), peak minus start of one steady-state guided iteration: LTXFamily.run_until
# truncated after block g with q/k captured, a dense gradient into q and k, backward; tests/families/
# test_ltx_memory.py's `measured`) on LTXVideoTransformer3DModel with 4 heads x 64, 3 latent frames of 10 x 14,
# 16 text tokens of 32 channels, g = 2 and 4, less the components modelled on their own (text, RoPE tables,
# captured q/k and their gradients, the optimised tensor's gradient). CPU SDPA is a flash kernel keeping a
# log-sum-exp, as flash / memory-efficient SDPA on a GPU. Raw (U, after those components), g = 2 / 4:
# bf16 checkpointed 27.12 / 27.17 (on top of the g + 1 block inputs), emb 31.18 / 31.23; without checkpointing
# 60.16 / 104.40, emb 65.20 / 125.44; fp32 checkpointed 20.08 / 20.10, emb 22.11 / 22.13; without 37.15 / 67.29,
# emb 40.10 / 78.24. In emb mode the stock rotation's x.float() copies of q and k (and their rotated halves) are
# kept for the backward: 8 U more per saved block in bf16, 4 in fp32 (where .float() copies nothing).
ACT = {
    2: dict(ckpt_input=1.0, ckpt_recompute=27.15, block=22.12, partial_and_backward=15.92,  # bf16 / fp16
            emb_ckpt=4.06, emb_block=8.0, emb_fixed=-10.96),
    4: dict(ckpt_input=1.0, ckpt_recompute=20.1, block=15.07, partial_and_backward=7.01,  # fp32
            emb_ckpt=2.02, emb_block=4.0, emb_fixed=-5.05),
}
# The VAE decode after the loop, per output pixel (frame x height x width), bf16: measured (torch.profiler memory
# timeline, peak minus start of vae.decode under no_grad) on AutoencoderKLLTXVideo(**presets._VAE) with random
# weights: 162.0 MiB for 17 frames of 256x384, 312.8 MiB for 33 (101.7 and 101.1 B/pixel; smaller sizes are
# dominated by a fixed ~110 MiB). fp32 is taken as twice this (not measured).
DECODE_BYTES_PER_PIXEL = 101
TEXT_FIXED, TEXT_PER_BLOCK = 1, 2  # [L, D] units: the projected prompt; cross-attention K/V per saved block


def transformer_counts(transformer_json: str) -> tuple[int, int, int]:
    """(all parameters, parameters of one block, blocks) of an LTX transformer config, on the meta device."""
    total, ((n_blocks, per_block),) = meta_counts("LTXVideoTransformer3DModel", transformer_json,
                                                  ("transformer_blocks",))
    return total, per_block, n_blocks


def vae_params(vae_cfg: dict) -> int:
    return meta_counts("AutoencoderKLLTXVideo", config_json(vae_cfg))[0]


def _entry(preset_or_config) -> dict:
    if isinstance(preset_or_config, str):
        if preset_or_config not in PRESETS:
            raise ModelError(f"--model {preset_or_config}: no LTX preset of that name (known: {', '.join(PRESETS)})")
        return PRESETS[preset_or_config]
    if "transformer" in preset_or_config:
        return preset_or_config
    return dict(transformer=preset_or_config, vae=_VAE, scheduler=SCHEDULER, text_len=TEXT_LEN)


def estimate(preset_or_config, *, frames: int, height: int, width: int, guidance_block: int,
             bytes_per_elem: int = 2, opt_mode: str = "latent", checkpointing: bool = True, offload: str = "none",
             offload_activations: bool = False, ffn_chunks: int | None = None) -> Estimate:
    """Predicted peak bytes by component of a guided LTX run (see the module docstring). ``preset_or_config``:
    a PRESETS name or entry, or a bare transformer config (then LTX-Video's VAE is assumed).
    ``offload_activations`` (needs ``checkpointing``): the checkpointed block inputs wait in host memory
    (``host_bytes`` of the result) and the recomputed block gets its input back as one more unit; this term is
    the Wan family's measured rule, not re-measured on LTX. ``ffn_chunks`` (Wan's FFN slices) is not modelled."""
    check_options(offload=offload, opt_mode=opt_mode, bytes_per_elem=bytes_per_elem, constants=ACT,
                  offload_activations=offload_activations, checkpointing=checkpointing)
    entry = _entry(preset_or_config)
    cfg, vae_cfg = entry["transformer"], entry.get("vae", _VAE)
    _, z, lat_f, lh, lw = latent_shape(vae_cfg, cfg, frames, height, width)
    p, pt = int(cfg.get("patch_size", 1)), int(cfg.get("patch_size_t", 1))
    ff, hh, ww = lat_f // pt, lh // p, lw // p
    heads, hd = cfg.get("num_attention_heads", 32), cfg.get("attention_head_dim", 64)
    dim, b = heads * hd, bytes_per_elem
    text_len, caption = int(entry.get("text_len", TEXT_LEN)), int(cfg.get("caption_channels", 4096))
    total, per_block, n_blocks = transformer_counts(config_json(cfg))
    check_block(guidance_block, n_blocks)
    g, c, emb = guidance_block, ACT[b], opt_mode == "emb"
    n = ff * hh * ww
    u, ul = n * dim * b, text_len * dim * b

    resident = total if offload != "group" else total - n_blocks * per_block + GROUP_RESIDENT_BLOCKS * per_block
    base = {"transformer weights": resident * b,
            "VAE weights": 0 if offload != "none" else vae_params(vae_cfg) * b}
    def activations(host: int) -> dict:
        if checkpointing:
            emb_units = c["emb_ckpt"] if emb else 0
            acts = {"checkpointed block inputs": 0 if host else round((g + 1) * c["ckpt_input"] * u),
                    "one block recomputed + backward": round((c["ckpt_recompute"] + host + emb_units) * u)}
        else:
            units = g * c["block"] + c["partial_and_backward"] + ((c["emb_fixed"] + g * c["emb_block"]) if emb else 0)
            acts = {"block activations (no ckpt)": round(units * u)}
        text_blocks = 1 if checkpointing else g
        acts["text embeds + cross-attn K/V"] = (TEXT_FIXED + TEXT_PER_BLOCK * text_blocks) * ul + text_len * caption * b
        acts["RoPE tables (fp32)"] = 2 * n * dim * 4
        return acts

    acts, plain = activations(int(offload_activations)), activations(0)  # the research code offloads nothing
    est = Estimate.build(base, acts, plain, {"captured q, k and grads": 4 * n * dim * b}, heads=heads,
                         grid=(ff, hh, ww), bytes_per_elem=b,
                         opt_elems=lat_f * z * lh * lw if opt_mode == "latent" else 4 * n * dim)
    est.host_bytes = (g + 1) * u if offload_activations else 0
    return est


def notes(model: str, cfg, run) -> list[str]:
    """What ``--dry-run`` adds below the table for LTX (``run``: what the table was computed from, a
    :class:`~ditflow_fast.families.base.DryRun`): the default guidance block's status and the peaks outside the
    loop: T5-XXL before it, the VAE decode after it (:data:`DECODE_BYTES_PER_PIXEL`)."""
    b = run.bytes_per_elem
    lines = [] if cfg.guidance_blocks else [f"(guidance block {run.block}: the LTX default, {UNVERIFIED})"]
    lines.append(f"(before the loop, --prompt loads T5-XXL alone: {T5_XXL_ENCODER_PARAMS * b / 2**30:.2f} GiB of "
                 "weights; --prompt-embeds skips it)")
    entry = _entry(run.config)
    resident = 0 if run.offload != "none" else transformer_counts(config_json(entry["transformer"]))[0] * b
    vae = vae_params(entry.get("vae", _VAE)) * b
    act = DECODE_BYTES_PER_PIXEL * b / 2 * run.frames * run.height * run.width
    lines.append(f"(after the loop the VAE decodes: about {act / 2**30:.2f} GiB of activations untiled, with "
                 f"{(resident + vae) / 2**30:.2f} GiB of weights on the device; --vae-tiling lowers the first)")
    return lines


def memory_config(model: str) -> dict:
    """A PRESETS-shaped entry for a preset name or a local LTX folder (no weights read; another codec in ``vae/``,
    the toy world's, counts as LTX-Video's VAE, and --dry-run says so)."""
    if model in PRESETS:
        return PRESETS[model]
    tr, vae = folder_configs(model, _VAE, "AutoencoderKLLTXVideo", f"LTX presets: {', '.join(PRESETS)}")
    return dict(transformer=tr, vae=vae, scheduler=SCHEDULER, text_len=TEXT_LEN)
