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

import functools
import json
from pathlib import Path

from ...backends.reference import research_bytes
from ..base import ModelError, foreign_vae
from ..estimate import AMF_BUDGET, Estimate
from .presets import _VAE, PRESETS, TEXT_LEN, block_count, defaults

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
GROUP_RESIDENT_BLOCKS = 2
OFFLOAD_MODES = ("none", "model", "group")


@functools.lru_cache(maxsize=16)
def _counts(transformer_json: str) -> tuple[int, int, int]:
    """(all parameters, parameters of one dual-stream block, of one single-stream block), on the meta device."""
    import torch
    from diffusers import HunyuanVideoTransformer3DModel

    cfg = json.loads(transformer_json)
    with torch.device("meta"):
        m = HunyuanVideoTransformer3DModel(**cfg)

    def count(mod):
        return sum(p.numel() for p in mod.parameters())

    dual = count(m.transformer_blocks[0]) if len(m.transformer_blocks) else 0
    single = count(m.single_transformer_blocks[0]) if len(m.single_transformer_blocks) else 0
    return count(m), dual, single


@functools.lru_cache(maxsize=8)
def vae_params(vae_json: str) -> int:
    import torch
    from diffusers import AutoencoderKLHunyuanVideo

    with torch.device("meta"):
        vae = AutoencoderKLHunyuanVideo(**json.loads(vae_json))
    return sum(p.numel() for p in vae.parameters())


def _json(d: dict) -> str:
    return json.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if not k.startswith("_")},
                      sort_keys=True)


def _entry(preset_or_config) -> dict:
    if isinstance(preset_or_config, str):
        return memory_config(preset_or_config)
    if "transformer" in preset_or_config:
        return preset_or_config
    return dict(transformer=preset_or_config, vae=_VAE, text_len=TEXT_LEN)


def estimate(preset_or_config, *, frames: int, height: int, width: int, guidance_block: int, bytes_per_elem: int = 2,
             opt_mode: str = "latent", checkpointing: bool = True, offload: str = "none",
             offload_activations: bool = False) -> Estimate:
    """Predicted peak bytes by component of a guided HunyuanVideo run (see the module docstring).
    ``host_bytes`` of the result: the pinned host memory the offloaded activations take."""
    if offload not in OFFLOAD_MODES:
        raise ValueError(f"offload must be one of {OFFLOAD_MODES}, got {offload!r}")
    if opt_mode not in ("latent", "emb"):
        raise ValueError(f"opt_mode must be 'latent' or 'emb', got {opt_mode!r}")
    if bytes_per_elem not in ACT:
        raise ValueError(f"bytes_per_elem must be 2 (bf16/fp16) or 4 (fp32), got {bytes_per_elem}")
    if offload_activations and not checkpointing:
        raise ValueError("offload_activations needs checkpointing (the loop refuses the combination)")
    entry = _entry(preset_or_config)
    cfg, vae_cfg = entry["transformer"], entry.get("vae", _VAE)
    n_blocks = block_count(cfg)
    if not 0 <= guidance_block < n_blocks:
        raise ValueError(f"guidance block {guidance_block} out of range: the transformer has {n_blocks} blocks")
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
    total, dual, single = _counts(_json(cfg))
    resident = total if offload != "group" else \
        total - int(cfg["num_layers"]) * dual - int(cfg.get("num_single_layers", 0)) * single + \
        GROUP_RESIDENT_BLOCKS * max(dual, single)
    vae = 0 if offload != "none" else vae_params(_json(vae_cfg)) * 4  # loaded in float32
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
    opt_elems = lat_f * z * lh * lw if opt_mode == "latent" else 4 * n * hd
    opt = {"optimised tensor + Adam (fp32)": 4 * opt_elems * 4}
    est = Estimate({**base, **ours, **common, "AMF working set": min(AMF_BUDGET, 4 * n * n) + 3 * ff * n * 4, **opt},
                   {**base, **plain, **common, "AMF working set": research_bytes(heads, ff, hh, ww, b), **opt})
    est.host_bytes = (g + 1) * u if offload_activations else 0
    return est


def memory_config(model: str) -> dict:
    """A PRESETS-shaped entry for the preset or a local HunyuanVideo folder (its configs only, no weights)."""
    if model in PRESETS:
        return PRESETS[model]
    root = Path(model).expanduser()
    try:
        tr = json.loads((root / "transformer" / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"--model {model}: no readable transformer/config.json ({exc}); HunyuanVideo presets: "
                         f"{', '.join(PRESETS)}") from exc
    try:  # another codec (the toy world's) counts as HunyuanVideo's VAE, and --dry-run says so
        vae = dict(_VAE) if foreign_vae(model, "AutoencoderKLHunyuanVideo") else \
            json.loads((root / "vae" / "config.json").read_text())
    except (OSError, ValueError):
        vae = dict(_VAE)
    clean = {k: v for k, v in tr.items() if not k.startswith("_")}
    return dict(transformer=clean, vae={k: v for k, v in vae.items() if not k.startswith("_")}, text_len=TEXT_LEN)


def dry_run_notes(model: str, cfg, offload: str = "none") -> str:
    """The lines ``--dry-run`` adds under the generic table for HunyuanVideo: offload and host memory, the guidance
    block derived from depth (unverified), ``--cfg`` as the embedded guidance scale."""
    config = memory_config(model)
    d = defaults(config)
    offload = "model" if offload == "none" and cfg.cpu_offload else offload
    notes = [f"(offload {offload}" + (f": non-block parameters + {GROUP_RESIDENT_BLOCKS} blocks resident" if
                                       offload == "group" else "") + ")"]
    if cfg.offload_activations and cfg.gradient_checkpointing:
        block = max(cfg.guidance_blocks or d["guidance_blocks"])
        est = estimate(config, frames=cfg.frames or d["frames"], height=cfg.height or d["height"],
                       width=cfg.width or d["width"], guidance_block=block, opt_mode=cfg.opt_mode, offload=offload,
                       bytes_per_elem=4 if str(cfg.dtype or d["dtype"]).endswith("float32") else 2,
                       offload_activations=True)
        notes.append(f"(activations offloaded: the checkpointed block inputs take {est.host_bytes / 2**30:.2f} GiB of "
                     "pinned host memory)")
    if not cfg.guidance_blocks:
        notes.append(f"(guidance block {max(d['guidance_blocks'])} of {block_count(config)}: derived from depth as "
                     "DiTFlow's and FastVMT's, unverified on real weights)")
    notes.append(f"(--cfg is the embedded guidance scale, default {d['cfg_scale']:g}: one forward per step, no "
                 "unconditional pass; decoding 720p needs --vae-tiling)")
    return "\n".join(notes)
