"""Predicted peak GPU memory of a guided HunyuanVideo run, by component, next to the research procedure's.

The same accounting as the CogVideoX and Wan models (:class:`~ditflow_fast.families.estimate.Estimate`), with
HunyuanVideo's shapes: ``N = F'*h*w`` video tokens (VAE 4x temporal, 8x spatial, 2x2 patches) and ``L`` = 256
text tokens in one joint attention of ``T = N + L`` tokens, ``D`` = 3072 wide.

- **weights**: the transformer's parameters (counted exactly on the meta device) and the VAE's (float32, as
  loaded) unless offloaded. ``offload``: ``"none"``, ``"model"`` (the VAE on the CPU during the loop), ``"group"``
  (diffusers' block-level group offloading: the non-block parameters plus two blocks, the running one and the one
  prefetched / in the backward, counted as two dual-stream blocks, the larger kind). The text encoders (Llama-3-8B
  and CLIP-L) run and are released before the loop.
- **activations**, in units of one ``[T, D]`` tensor (``U = T*D*b``) and one ``[T, mlp_ratio*D]`` tensor, constants
  measured with torch's memory timeline on CPU runs of HunyuanVideo-shaped tiny transformers (see ``ACT``;
  ``tests/families/test_hunyuan_memory.py`` re-measures them on another shape). With gradient checkpointing:
  ``g + 1`` block inputs and one block recomputed with its backward (the larger of a dual- and a single-stream
  block: the backward recomputes every block below the guidance block); without: every block up to ``g`` kept.
  ``offload_activations``: the checkpointed inputs wait in host memory (reported, not counted).
- **RoPE tables** ``(cos, sin)`` ``[N, d]`` float32; captured q/k and their gradients; the AMF working set and the
  optimised tensor with Adam, as for the other families.

What the CPU cannot show: the CUDA context and workspaces (about 0.5-1 GB) and fragmentation come on top, and the
VAE's decode after the loop needs ``--vae-tiling`` at 720p (it is not part of the loop's peak).
"""

from __future__ import annotations

from ..estimate import GROUP_RESIDENT_BLOCKS, Estimate, check_block, check_options, config_json, meta_counts
from ..folders import folder_configs
from .presets import _VAE, PRESETS, TEXT_LEN, block_count

# Activation constants, in [T, D] units of the run's element size; *_ffn: per unit of mlp_ratio. Measured (torch
# profiler memory timeline, export_memory_timeline(device="cpu"), peak minus start of one steady-state guided
# iteration: HunyuanVideoFamily.run_until truncated after block g with q/k captured, a dense gradient into q and k,
# backward) on HunyuanVideoTransformer3DModel with 4 heads x 64, mlp_ratio 2 and 4, 6 dual- then 3 single-stream
# blocks, 3 latent frames of 10 x 14 patches and 32 text tokens, g = 2..8, after subtracting the components
# modelled on their own (RoPE tables, captured q/k and grads, the optimised tensor's gradient). The guidance
# block's kind decides: a single-stream block computes its MLP branch (proj_mlp, 4x wide) before its attention,
# so stopping there costs that branch. Raw bf16 numbers with checkpointing, mlp 4 (U, less modelled): g = 2..5
# (dual) 23.64, 24.66, 25.69, 26.71; g = 6..8 (single) 35.85, 36.87, 37.89; mlp 2: 21.65 (g 4), 32.87 (g 7);
# mlp 6: 31.26 (g 4, the model says 29.6), 40.87 (g 7). Without checkpointing, per kept block: dual 14.15 / 16.15
# (mlp 2 / 4), single 13.12 / 15.12; fp32 10.1 / 12.1 and 9.07 / 11.07. Offloaded activations (the saved
# tensors in emulated host memory): no growth with g (+0.02 U per block); bf16 dual 18.57 / 22.60, single
# 25.81 / 29.81; fp32 14.23 / 18.58 and 18.09 / 23.38. --opt-mode emb (tables requiring grad: each block's
# rotation keeps float32 copies of q and k), mlp 4: bf16 +6.56 (dual) +4.03 (single; +5.09 offloaded), fp32
# +3.31 / +3.46; without checkpointing +7.46 per block - 1.98 (fp32 +3.32 per block + 0.69).
ACT = {
    2: dict(ckpt_input=1.02, rec_dual=12.51, rec_dual_ffn=2.02, rec_single=20.71, rec_single_ffn=2.0,
            rec_dual_host=14.54, rec_dual_ffn_host=2.02, rec_single_host=21.81, rec_single_ffn_host=2.0,
            emb_ckpt_dual=6.56, emb_ckpt_single=5.09,
            block_dual=12.15, block_single=11.12, block_ffn=1.0, partial_dual=12.77, partial_single=15.31,
            partial_single_ffn=2.0, emb_block=7.46, emb_fixed=-1.98),
    4: dict(ckpt_input=1.02, rec_dual=7.78, rec_dual_ffn=2.18, rec_single=12.64, rec_single_ffn=2.15,
            rec_dual_host=9.88, rec_dual_ffn_host=2.18, rec_single_host=12.80, rec_single_ffn_host=2.65,
            emb_ckpt_dual=3.31, emb_ckpt_single=3.46,
            block_dual=8.1, block_single=7.07, block_ffn=1.0, partial_dual=6.54, partial_single=8.79,
            partial_single_ffn=2.0, emb_block=3.32, emb_fixed=0.69),
}


def _entry(preset_or_config) -> dict:
    if isinstance(preset_or_config, str):
        return memory_config(preset_or_config)
    if "transformer" in preset_or_config:
        return preset_or_config
    return dict(transformer=preset_or_config, vae=_VAE, text_len=TEXT_LEN)


def estimate(preset_or_config, *, frames: int, height: int, width: int, guidance_block: int, bytes_per_elem: int = 2,
             opt_mode: str = "latent", checkpointing: bool = True, offload: str = "none",
             offload_activations: bool = False, ffn_chunks: int | None = None) -> Estimate:
    """Predicted peak bytes by component of a guided HunyuanVideo run (see the module docstring).
    ``host_bytes`` of the result: the pinned host memory the offloaded activations take. ``ffn_chunks`` (Wan's FFN
    slices) is not modelled."""
    check_options(offload=offload, opt_mode=opt_mode, bytes_per_elem=bytes_per_elem, constants=ACT,
                  offload_activations=offload_activations, checkpointing=checkpointing)
    entry = _entry(preset_or_config)
    cfg, vae_cfg = entry["transformer"], entry.get("vae", _VAE)
    check_block(guidance_block, block_count(cfg))
    temporal = int(vae_cfg.get("temporal_compression_ratio", 4))
    spatial = int(vae_cfg.get("spatial_compression_ratio", 8))
    z, p, pt = int(vae_cfg.get("latent_channels", 16)), int(cfg.get("patch_size", 2)), int(cfg.get("patch_size_t", 1))
    lat_f, lh, lw = (frames - 1) // temporal + 1, height // spatial, width // spatial
    ff, hh, ww = lat_f // pt, lh // p, lw // p
    heads, hd = int(cfg["num_attention_heads"]), int(cfg["attention_head_dim"])
    dim, b, mlp = heads * hd, bytes_per_elem, float(cfg.get("mlp_ratio", 4.0))
    n, text_len = ff * hh * ww, int(entry.get("text_len", TEXT_LEN))
    u = (n + text_len) * dim * b
    g, c = guidance_block, ACT[b]
    total, ((_, dual), (_, single)) = meta_counts("HunyuanVideoTransformer3DModel", config_json(cfg),
                                                  ("transformer_blocks", "single_transformer_blocks"))
    resident = total if offload != "group" else \
        total - int(cfg["num_layers"]) * dual - int(cfg.get("num_single_layers", 0)) * single + \
        GROUP_RESIDENT_BLOCKS * max(dual, single)
    vae = 0 if offload != "none" else meta_counts("AutoencoderKLHunyuanVideo", config_json(vae_cfg))[0] * 4  # float32
    base = {"transformer weights": resident * b, "VAE weights": vae}
    kind = "single" if g >= int(cfg["num_layers"]) else "dual"  # the guidance block's
    emb = opt_mode == "emb"
    if checkpointing:
        def acts(host):
            h = "_host" if host else ""
            rec = c[f"rec_{kind}{h}"] + c[f"rec_{kind}_ffn{h}"] * mlp + (c[f"emb_ckpt_{kind}"] if emb else 0)
            return {"checkpointed block inputs": 0 if host else round((g + 1) * c["ckpt_input"] * u),
                    "one block recomputed + backward": round(rec * u)}
        ours, plain = acts(offload_activations), acts(False)
    else:
        dual_kept, single_kept = min(g, int(cfg["num_layers"])), max(0, g - int(cfg["num_layers"]))
        units = (dual_kept * c["block_dual"] + single_kept * c["block_single"] + g * c["block_ffn"] * mlp
                 + c[f"partial_{kind}"] + (c["partial_single_ffn"] * mlp if kind == "single" else 0)
                 + ((c["emb_block"] * g + c["emb_fixed"]) if emb else 0))
        ours = plain = {"block activations (no ckpt)": round(units * u)}
    common = {"RoPE tables (fp32)": 2 * n * hd * 4, "captured q, k and grads": 4 * n * dim * b}
    est = Estimate.build(base, ours, plain, common, heads=heads, grid=(ff, hh, ww), bytes_per_elem=b,
                         opt_elems=lat_f * z * lh * lw if opt_mode == "latent" else 4 * n * hd)
    est.host_bytes = (g + 1) * u if offload_activations else 0
    return est


def memory_config(model: str) -> dict:
    """A PRESETS-shaped entry for the preset or a local HunyuanVideo folder (its configs only, no weights; another
    codec in ``vae/``, the toy world's, counts as HunyuanVideo's VAE, and --dry-run says so)."""
    if model in PRESETS:
        return PRESETS[model]
    tr, vae = folder_configs(model, _VAE, "AutoencoderKLHunyuanVideo", f"HunyuanVideo presets: {', '.join(PRESETS)}")
    return dict(transformer=tr, vae=vae, text_len=TEXT_LEN)


def dry_run_notes(model: str, cfg, run) -> list[str]:
    """The lines ``--dry-run`` adds under the generic table for HunyuanVideo (``run``: what the table was computed
    from, a :class:`~ditflow_fast.families.base.DryRun`): offload and host memory, the guidance block derived from
    depth (unverified), ``--cfg`` as the embedded guidance scale."""
    notes = [f"(offload {run.offload}" + (f": non-block parameters + {GROUP_RESIDENT_BLOCKS} blocks resident" if
                                           run.offload == "group" else "") + ")"]
    if cfg.offload_activations and cfg.gradient_checkpointing:  # the table's estimate has them offloaded
        notes.append(f"(activations offloaded: the checkpointed block inputs take "
                     f"{run.estimate.host_bytes / 2**30:.2f} GiB of pinned host memory)")
    if not cfg.guidance_blocks:
        notes.append(f"(guidance block {run.block} of {block_count(run.config)}: derived from depth as "
                     "DiTFlow's and FastVMT's, unverified on real weights)")
    notes.append(f"(--cfg is the embedded guidance scale, default {run.defaults['cfg_scale']:g}: one forward per "
                 "step, no unconditional pass; decoding 720p needs --vae-tiling)")
    return notes
