"""The guidance run's settings, with DiTFlow's published defaults, and their resolution per model."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import operator
from dataclasses import dataclass, field

import torch

OPT_MODES = ("latent", "emb")
# the command line's name of a setting, for the errors
OPTIONS = {"cfg_scale": "--cfg", "flow_shift": "--flow-shift", "early_stop": "--early-stop"}
# torch seeds -2**63 .. 2**64-1, negatives wrapping (-1 is 2**64-1); the steps seed seed + 1 + i: the top
# half is their headroom, and every generator state has one seed
SEED_MAX = 2**63 - 1


def _finite(v) -> bool:
    try:
        return math.isfinite(v)
    except TypeError:
        return False


@dataclass
class GuidanceConfig:
    """One transfer run. ``None`` fields are resolved from the model by :meth:`resolve`.

    Defaults are DiTFlow's: guidance block 20 (RoPE models, CogVideoX-5B) or 15 (CogVideoX-2B);
    KV injection at block 0; the first 10 of 50 steps guided with 5 Adam iterations each and a
    learning rate falling linearly 0.002 -> 0.001; AMF temperature 2, thresholded loss; CFG 7,
    dynamic for 5B; DPM scheduler for 5B, DDIM for 2B; gradient checkpointing on.
    """

    model: str = "THUDM/CogVideoX-5b"
    # None: the family's default (CogVideoX 24 frames at 480x720; Wan 81 at 480x832; tiny models 9), by resolve()
    frames: int | None = None  # video frames taken from the reference
    height: int | None = None
    width: int | None = None
    opt_mode: str = "latent"
    loss: str = "flow"
    guidance: bool = True
    injection: bool = True
    inject_embeds: str | None = None
    guidance_blocks: tuple[int, ...] | None = None
    injection_blocks: tuple[int, ...] = (0,)
    steps: int | None = None  # None: the family's (50; Wan2.2 A14B 40)
    guided_steps: int = 10
    opt_iters: int = 5
    # speed levers (docs/guidance.md, "Speed levers"): one real forward+backward every ``grad_reuse``-th
    # iteration, the Adam steps in between reuse its gradient (FastVMT's is 3); a guided step stops its
    # iterations once its AMF loss falls by less than ``early_stop`` (relative) from one pass to the next
    grad_reuse: int = 1
    early_stop: float = 0.0
    lr: tuple[float, float] = (0.002, 0.001)
    temperature: float = 2.0
    threshold: bool = True
    prop_motion: float = 0.04  # MOFT: fraction of channels kept as motion channels
    # loss "flow_window" (FastVMT-style): the side of the square window of key patches around each query patch
    # (odd), and the farthest frame pair compared (None: every pair); losses.window_amf
    amf_window: int = 5
    amf_window_frames: int | None = 3
    # the AMF's q and k with the rotary position embedding, as the attention uses them (DiTFlow's), or
    # before it (False: content alone; RoPE pins the tiny Wan model's reference AMF to standing still,
    # docs/toyworld.md). Attention is unchanged either way.
    amf_rope: bool = True
    cfg_scale: float | None = None  # None: the family's (CogVideoX 7, DiTFlow's; Wan 5, or 4 for A14B)
    dynamic_cfg: bool | None = None
    cfg_min_t: int = 0  # guidance interval: CFG only at timesteps >= this; below, the conditional prediction alone
    cfg_scale_2: float | None = None  # Wan2.2 A14B's low-noise expert (None: cfg_scale if given, else the preset's)
    flow_shift: float | None = None  # Wan: UniPC's flow shift (None: the model folder's)
    scheduler: str | None = None  # "dpm" | "ddim" (CogVideoX) | "unipc" (Wan) | "flow_euler" (HunyuanVideo)
    seed: int = 0
    gradient_checkpointing: bool = True
    dtype: str | None = None  # "float32" | "bfloat16" | "float16"
    device: str | None = None
    cpu_offload: bool = False
    vae_slicing: bool = True
    vae_tiling: bool = False
    backend: str = "auto"
    # Host memory for what the truncated guided forward saves for its backward (torch's save_on_cpu;
    # exact copies: placement only, like cpu_offload, so not in the run key). Needs checkpointing.
    offload_activations: bool = False
    ffn_chunks: int | None = None  # Wan: the guided backward's FFN in token slices; None automatic, 0/1 off
    extra: dict = field(default_factory=dict)

    def validate(self) -> GuidanceConfig:
        lr = self.lr
        if not isinstance(lr, (tuple, list)) or len(lr) != 2 or any(
                isinstance(v, bool) or not _finite(v) or v < 0 for v in lr):
            # torch's Adam would refuse a negative rate only at the first guided step, naming no option
            raise ValueError(f"lr (--lr FIRST LAST) must be two finite numbers >= 0, got {lr!r}")
        # argparse's float() takes 'nan' and 'inf': refused here, before any model is loaded
        floats = {"lr": self.lr, "temperature": self.temperature, "prop_motion": self.prop_motion,
                  "cfg_scale": self.cfg_scale, "cfg_scale_2": self.cfg_scale_2, "flow_shift": self.flow_shift,
                  "early_stop": self.early_stop}
        for name, value in floats.items():
            for v in value if isinstance(value, (tuple, list)) else (value,):
                if v is not None and not _finite(v):
                    option = f" ({OPTIONS[name]})" if name in OPTIONS else ""
                    raise ValueError(f"{name}{option} must be a finite number, got {value!r}")
        if self.flow_shift is not None and self.flow_shift <= 0:  # UniPC's shifted sigmas leave [0, 1]
            raise ValueError(f"flow_shift (--flow-shift) must be positive, got {self.flow_shift!r}")
        try:
            seed = None if isinstance(self.seed, bool) else operator.index(self.seed)
        except TypeError:
            seed = None
        if seed is None or not 0 <= seed <= SEED_MAX:
            raise ValueError(f"seed (--seed {self.seed}) must be a whole number in 0 .. {SEED_MAX}")
        if self.opt_mode not in OPT_MODES:
            raise ValueError(f"opt_mode must be one of {OPT_MODES}, got {self.opt_mode!r}")
        from .losses import LOSSES, needs_qk

        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        for name, low, what in (("amf_window", 1, "an odd whole number of patches >= 1"),
                                ("amf_window_frames", 0, "a whole number of frames >= 0, or None (every pair)")):
            value = getattr(self, name)
            if value is None and name == "amf_window_frames":
                continue
            try:
                ok = not isinstance(value, bool) and operator.index(value) >= low \
                    and (name != "amf_window" or value % 2 == 1)
            except TypeError:
                ok = False
            if not ok:
                raise ValueError(f"{name} must be {what}, got {value!r}")
        if not isinstance(self.amf_rope, bool):
            raise ValueError(f"amf_rope (--amf-no-rope) must be a bool, got {self.amf_rope!r}")
        # emb mode optimises the RoPE tables, which an AMF taken before RoPE at block 0 alone cannot see
        # (resolve() validates again once the model's default blocks are in)
        if (not self.amf_rope and self.guidance and self.opt_mode == "emb" and not self.inject_embeds
                and needs_qk(self.loss) and self.guidance_blocks is not None and max(self.guidance_blocks) == 0):
            raise ValueError("amf_rope=False (--amf-no-rope) with opt_mode 'emb' guides block 0 only, where q/k before "
                             "RoPE do not depend on the positional embeddings being optimised: guide a later block "
                             "(--guidance-block) or keep RoPE in the AMF")
        for name in ("frames", "height", "width", "steps", "opt_iters"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if isinstance(self.grad_reuse, bool) or int(self.grad_reuse) != self.grad_reuse or self.grad_reuse < 1:
            raise ValueError(f"grad_reuse (--grad-reuse) must be a whole number >= 1 (1: a real backward every "
                             f"iteration), got {self.grad_reuse!r}")
        if isinstance(self.early_stop, bool) or not isinstance(self.early_stop, (int, float)) \
                or not 0.0 <= float(self.early_stop) < 1.0:
            raise ValueError(f"early_stop (--early-stop) must lie in [0, 1) (a relative fall of the loss; 0: off), got "
                             f"{self.early_stop!r}")
        if not 0 <= self.guided_steps <= (self.steps if self.steps is not None else self.guided_steps):
            raise ValueError(f"guided_steps must lie in [0, steps={self.steps}], got {self.guided_steps}")
        if self.height is not None and self.width is not None and (self.height % 16 or self.width % 16):
            raise ValueError(f"--height/--width must be multiples of 16 (VAE x8, patch x2), got "
                             f"{self.height}x{self.width}")
        if self.inject_embeds is not None and self.opt_mode != "emb":
            raise ValueError("--inject-embeds needs --opt-mode emb (it injects saved positional embeddings)")
        if not 0 <= int(self.cfg_min_t) <= 1000:
            raise ValueError(f"cfg_min_t must lie in [0, 1000] (a timestep), got {self.cfg_min_t}")
        if self.scheduler not in (None, "dpm", "ddim", "unipc", "flow_euler"):
            raise ValueError(f"scheduler must be dpm, ddim, unipc or flow_euler, got {self.scheduler!r}")
        if self.ffn_chunks is not None and int(self.ffn_chunks) < 0:
            raise ValueError(f"ffn_chunks must be >= 0 (0 or 1: off), got {self.ffn_chunks}")
        if self.offload_activations and not self.gradient_checkpointing:
            raise ValueError("--offload-activations needs gradient checkpointing (drop --no-checkpointing): without "
                             "it the backward's saved tensors include the weights themselves")
        return self

    def resolve(self, transformer, device: torch.device | str | None = None, family=None) -> GuidanceConfig:
        """Fill the model-dependent defaults from the family (one place, shared with ``--dry-run``);
        raise if the blocks do not exist in this transformer. ``transformer``: a loaded transformer
        or its config (a dict, as read from ``transformer/config.json``)."""
        self.validate()
        if family is None:
            from ..families import family_of

            family = family_of(transformer)
        cfg = dict(transformer.config) if hasattr(transformer, "config") else dict(transformer)
        d = family.defaults(cfg)
        n = family.block_count(cfg)  # HunyuanVideo: dual-stream then single-stream blocks
        allowed = getattr(family, "schedulers", ()) or (d["scheduler"],)
        if self.scheduler is not None and self.scheduler not in allowed:
            raise ValueError(f"scheduler {self.scheduler!r}: {family.name} models sample with "
                             f"{' or '.join(allowed)}")
        blocks = self.guidance_blocks if self.guidance_blocks is not None else d["guidance_blocks"]
        # the loop keys its captures by block and runs up to the deepest one: none, or one twice, fails late
        for name, got, needed in (("guidance_blocks (--guidance-block)", blocks, True),
                                  ("injection_blocks (with injection on)", self.injection_blocks, self.injection)):
            if (needed and not len(got)) or len(set(got)) != len(got):
                raise ValueError(f"{name} must name each block once, and at least one, got {tuple(got)}")
        for b in tuple(blocks) + tuple(self.injection_blocks):
            if not 0 <= b < n:
                raise ValueError(f"block {b} does not exist: the model has {n} transformer blocks")
        dev = torch.device(device or self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = self.dtype or ("float32" if dev.type == "cpu" else d["dtype"])
        return dataclasses.replace(
            self, guidance_blocks=tuple(int(b) for b in blocks), injection_blocks=tuple(self.injection_blocks),
            dynamic_cfg=d.get("dynamic_cfg", False) if self.dynamic_cfg is None else self.dynamic_cfg,
            scheduler=self.scheduler or d["scheduler"], dtype=dtype, device=str(dev),
            frames=self.frames if self.frames is not None else d["frames"],
            height=self.height if self.height is not None else d["height"],
            width=self.width if self.width is not None else d["width"],
            cfg_scale=self.cfg_scale if self.cfg_scale is not None else d["cfg_scale"],
            cfg_scale_2=self._second_scale(d),
            steps=self.steps if self.steps is not None else d["steps"],
            # 3 and 3.0 are one setting: the run key must not tell them apart
            grad_reuse=int(self.grad_reuse), early_stop=float(self.early_stop)).validate()

    def _second_scale(self, preset: dict) -> float | None:
        """The low-noise expert's scale: as given, else on a two-expert model (whose preset has one) ``cfg_scale``
        where the user set that (one ``--cfg`` sets both experts), else the preset's. None on other models, which
        keeps it out of their run keys."""
        if self.cfg_scale_2 is not None or preset.get("cfg_scale_2") is None:
            return self.cfg_scale_2
        return self.cfg_scale if self.cfg_scale is not None else preset["cfg_scale_2"]

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.dtype]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lr"] = list(self.lr)
        return d

    def run_key(self, exclude: tuple[str, ...] = ()) -> str:
        """A hash of everything that changes the numbers: a saved state resumes only under the same key.
        ``exclude``: fields the caller keys separately (the command line names ``dtype`` on its own)."""
        d = self.to_dict()
        for k in ("device", "cpu_offload", "offload_activations", "vae_slicing", "vae_tiling", "extra", *exclude):
            d.pop(k, None)
        if d.get("cfg_min_t") == 0:  # the default leaves the keys of states saved before the option valid
            d.pop("cfg_min_t")
        for k in ("cfg_scale_2", "flow_shift", "ffn_chunks"):  # likewise for the options the Wan family added
            if d.get(k) is None:
                d.pop(k, None)
        # and for the options added later, at their defaults (the speed levers off, the AMF with RoPE)
        for k, off in (("grad_reuse", 1), ("early_stop", 0.0), ("amf_rope", True)):
            if d.get(k) == off:
                d.pop(k, None)
        if d.get("loss") != "flow_window":  # the window is flow_window's alone
            d.pop("amf_window", None)
            d.pop("amf_window_frames", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def lr_at(self, i: int) -> float:
        """Learning rate of guided step ``i``: linear from ``lr[0]`` to ``lr[1]`` over the guided steps."""
        if self.guided_steps <= 1:
            return float(self.lr[0])
        return float(self.lr[0] + (self.lr[1] - self.lr[0]) * i / (self.guided_steps - 1))
