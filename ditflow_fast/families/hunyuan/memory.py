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
from ..base import FamilyBase, ModelError, foreign_vae
from ..estimate import AMF_BUDGET, Estimate
from .presets import _VAE, PRESETS, TEXT_LEN, block_count, defaults

# Activation constants, in [T, D] units of the run's element size (*_ffn: one [T, mlp_ratio * D] tensor).
ACT = {
    2: dict(ckpt_input=1.0, recompute=20.0, recompute_ffn=1.5, block=16.0, block_ffn=1.0, partial_and_backward=10.0),
    4: dict(ckpt_input=1.0, recompute=12.0, recompute_ffn=2.0, block=10.0, block_ffn=1.5, partial_and_backward=6.0),
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
    if checkpointing:
        def acts(host):
            return {"checkpointed block inputs": 0 if host else round((g + 1) * c["ckpt_input"] * u),
                    "one block recomputed + backward": round((c["recompute"] + c["recompute_ffn"] * mlp) * u)}
        ours, plain = acts(offload_activations), acts(False)
    else:
        ours = plain = {"block activations (no ckpt)": round((g * (c["block"] + c["block_ffn"] * mlp)
                                                              + c["partial_and_backward"]) * u)}
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


def dry_run_table(model: str, cfg, offload: str = "none") -> str:
    """``--dry-run``'s text: the generic header and table (FamilyBase), with HunyuanVideo's notes: the guidance
    block is derived from depth and unverified; ``--cfg`` is the embedded guidance; host memory when activations
    are offloaded."""
    from .family import HunyuanVideoFamily

    table = FamilyBase.dry_run_table.__func__(HunyuanVideoFamily, model, cfg, offload)
    d = defaults(memory_config(model))
    notes = []
    if not cfg.guidance_blocks:
        notes.append(f"(guidance block {max(d['guidance_blocks'])}: derived from depth as DiTFlow's and FastVMT's, "
                     "unverified on real weights)")
    notes.append(f"(--cfg is the embedded guidance scale, default {d['cfg_scale']:g}: one forward per step, no "
                 "unconditional pass; decoding 720p needs --vae-tiling)")
    return table + "\n" + "\n".join(notes)
