"""The demo's methods and settings, importable without torch (the command line's parser needs them)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "assets" / "tiny_dit"  # the bundled CogVideoX-like model

# Each row: the GuidanceConfig fields that make the method (everything else: the demo's settings).
ROWS = {
    "no guidance": dict(guidance=False, injection=False),
    "KV injection only": dict(guidance=False, injection=True),
    "DiTFlow latent": dict(opt_mode="latent", loss="flow"),
    "DiTFlow emb": dict(opt_mode="emb", loss="flow"),
    "zero-shot": dict(opt_mode="emb", loss="flow", injection=False),  # + inject_embeds from "DiTFlow emb"
    "MOFT": dict(opt_mode="latent", loss="moft"),
    "SMM": dict(opt_mode="latent", loss="smm"),
    # FastVMT-style (docs/toyworld.md, "FTD and the peer rows"): the AMF loss within a 5 x 5-patch window
    # around each patch and frame pairs at most 3 apart (FastVMT's sf = 4), a real backward every 3rd Adam
    # iteration and the gradient reused in between (FastVMT's interval 3), no KV injection (FastVMT has none)
    "FastVMT-style": dict(opt_mode="latent", loss="flow_window", amf_window=5, amf_window_frames=3, grad_reuse=3,
                          injection=False),
    # RoPECraft's spirit only: the motion reaches the generation through the optimised RoPE tables alone (no
    # KV injection, no latent change), driven by DiTFlow's AMF loss, not RoPECraft's flow-warped RoPE and
    # flow-matching target (docs/toyworld.md says why)
    "RoPE-only AMF": dict(opt_mode="emb", loss="flow", injection=False),
}


@dataclass
class DemoSettings:
    """The sampling and guidance settings of the demo (the tiny model's counterparts of DiTFlow's defaults).

    The learning rate was chosen on tuning clips (clip seed 1) disjoint from the reported ones (clip seed
    0), the CFG scale on unguided samples' quality numbers; see docs/toyworld.md. They differ from the
    paper's (10 of 50 steps guided, lr 0.002 -> 0.001, CFG 7 at every step): the tiny model's own motion
    is weak, so half of the 20 steps are guided, and its unit-variance latents take a larger step."""

    steps: int = 20
    guided_steps: int = 10
    opt_iters: int = 5
    lr: tuple[float, float] = (0.02, 0.01)
    cfg_scale: float = 3.0
    # guidance interval (CFG only at timesteps >= cfg_min_t): the pixel model needed 600; the latent
    # model samples best with CFG 3 at every step (docs/toyworld.md, "The latent model")
    cfg_min_t: int = 0
    # the block whose reference AMF follows the world's motion best in the committed latent model
    # (diagnostics.amf_errors on the tuning clips; the pixel model's was block 2); None: the loop's num_layers // 2
    guidance_block: int | None = 3
    temperature: float = 2.0
    # the AMF's q/k with RoPE (True) or before it (GuidanceConfig.amf_rope; both toy models choose False in their
    # world.json, docs/toyworld.md)
    amf_rope: bool = True
    # K/V injection at block 0 in the guided rows that do not set it themselves (DiTFlow's default: on)
    kv_injection: bool = True
    # the guidance loop's speed levers (GuidanceConfig.grad_reuse / early_stop; docs/toyworld.md, "Speed levers")
    grad_reuse: int = 1
    early_stop: float = 0.0


def model_settings(model_dir=DEFAULT_DIR) -> DemoSettings:
    """The demo's settings for a model folder: :class:`DemoSettings`' defaults, overridden by the
    ``demo_settings`` its ``world.json`` records (chosen on that model's tuning clips, docs/toyworld.md)."""
    path = Path(model_dir) / "world.json"
    chosen = dict(json.loads(path.read_text()).get("demo_settings", {})) if path.is_file() else {}
    unknown = sorted(set(chosen) - {f.name for f in fields(DemoSettings)})
    if unknown:
        raise ValueError(f"{path}: demo_settings has unknown fields {unknown}")
    if "lr" in chosen:
        chosen["lr"] = tuple(chosen["lr"])
    return DemoSettings(**chosen)
