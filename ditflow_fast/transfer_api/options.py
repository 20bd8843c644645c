"""The options of a motion transfer: ``ditflow-fast transfer``'s, with underscores, checked by its rules.

One set of defaults and one set of checks for the command line, the Python API, the app and batch.
Messages are written with the command line's ``--flags``; :func:`python_names` turns them into the
Python names for callers of :func:`ditflow_fast.transfer`.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from dataclasses import dataclass

FORMATS = ("mp4", "gif", "frames")
OFFLOADS = ("none", "model", "group")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class TransferOptions:
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    opt_mode: str = "latent"
    loss: str = "flow"
    no_guidance: bool = False
    no_injection: bool = False
    amf_no_rope: bool = False
    inject_embeds: str | None = None
    guidance_block: tuple[int, ...] | None = None
    cfg: float | None = None
    flow_shift: float | None = None
    steps: int | None = None
    guided_steps: int = 10
    opt_iters: int = 5
    grad_reuse: int = 1
    early_stop: float = 0.0
    lr: tuple[float, float] = (0.002, 0.001)
    seed: int = 0
    dtype: str | None = None
    device: str | None = None
    no_checkpointing: bool = False
    cpu_offload: bool = False
    offload: str = "none"
    offload_activations: bool | None = None
    ffn_chunks: int | None = None
    vae_tiling: bool = False
    format: str = "mp4"
    fps: int = 8
    fresh: bool = False
    threads: int | None = None
    ref_cache: str | None = None

    @classmethod
    def from_kwargs(cls, **options) -> TransferOptions:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"unknown transfer option {', '.join(map(repr, unknown))}; the options: "
                            f"{', '.join(sorted(names))}")
        if isinstance(options.get("guidance_block"), int):
            options["guidance_block"] = (options["guidance_block"],)
        if options.get("guidance_block") is not None:
            options["guidance_block"] = tuple(options["guidance_block"])
        if options.get("lr") is not None and not isinstance(options["lr"], (tuple, list)):
            options["lr"] = (options["lr"], options["lr"])
        return cls(**options).check()

    @classmethod
    def from_namespace(cls, a) -> TransferOptions:
        """From ``transfer``'s parsed arguments (any object with its attribute names)."""
        got = {f.name: getattr(a, f.name) for f in dataclasses.fields(cls) if hasattr(a, f.name)}
        return cls.from_kwargs(**got)

    def check(self) -> TransferOptions:
        """The command line's rules, before anything is loaded (the model-dependent ones come with the model)."""
        _kinds(self)
        if self.fps <= 0:
            raise ValueError(f"--fps must be positive, got {self.fps}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be positive, got {self.threads}")
        if self.format not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.offload not in OFFLOADS:
            raise ValueError(f"--offload must be one of {', '.join(OFFLOADS)}, got {self.offload!r}")
        if self.offload == "group" and self.no_checkpointing:
            raise ValueError("--offload group needs gradient checkpointing (drop --no-checkpointing): the backward "
                             "of a block reads weights that group offloading has sent back to the CPU")
        self.guidance_config("model")  # GuidanceConfig's own checks
        return self

    @property
    def offload_activations_on(self) -> bool:
        """``offload_activations`` as given, else on exactly with ``offload="group"``."""
        if self.offload_activations is None:
            return self.offload == "group" and not self.no_checkpointing
        return bool(self.offload_activations)

    def guidance_config(self, model: str):
        from ..guidance.config import GuidanceConfig

        return GuidanceConfig(
            model=model, frames=self.frames, height=self.height, width=self.width, opt_mode=self.opt_mode,
            loss=self.loss, guidance=not self.no_guidance, injection=not self.no_injection,
            inject_embeds=self.inject_embeds, guidance_blocks=self.guidance_block, steps=self.steps,
            guided_steps=self.guided_steps, opt_iters=self.opt_iters, seed=self.seed, dtype=self.dtype,
            device=self.device, grad_reuse=self.grad_reuse, early_stop=self.early_stop, lr=tuple(self.lr),
            gradient_checkpointing=not self.no_checkpointing, cpu_offload=self.cpu_offload,
            vae_tiling=self.vae_tiling, cfg_scale=self.cfg, flow_shift=self.flow_shift,
            offload_activations=self.offload_activations_on, ffn_chunks=self.ffn_chunks,
            amf_rope=not self.amf_no_rope,
        ).validate()


_INTS = ("frames", "height", "width", "steps", "guided_steps", "opt_iters", "grad_reuse", "seed", "fps", "threads",
         "ffn_chunks")
_BOOLS = ("no_guidance", "no_injection", "amf_no_rope", "no_checkpointing", "cpu_offload", "vae_tiling", "fresh")


def _kinds(o: TransferOptions) -> None:
    for name in _INTS:
        v = getattr(o, name)
        if v is not None and not _is_int_like(v):
            raise TypeError(f"--{name.replace('_', '-')} must be a whole number, got {v!r}")
    for name in _BOOLS:
        if not isinstance(getattr(o, name), bool):
            raise TypeError(f"--{name.replace('_', '-')} must be True or False, got {getattr(o, name)!r}")
    for name in ("inject_embeds", "dtype", "device", "ref_cache", "opt_mode", "loss", "offload", "format"):
        if getattr(o, name) is not None and not isinstance(getattr(o, name), str):
            raise TypeError(f"--{name.replace('_', '-')} must be a string, got {getattr(o, name)!r}")
    if o.dtype is not None and o.dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {o.dtype!r}")
    if o.offload_activations is not None and not isinstance(o.offload_activations, bool):
        raise TypeError(f"--offload-activations must be True, False or None, got {o.offload_activations!r}")
    for b in o.guidance_block or ():
        if isinstance(b, bool) or not _is_int_like(b):
            raise TypeError(f"--guidance-block must be whole numbers, got {o.guidance_block!r}")


def _is_int_like(v) -> bool:
    """An int, numpy integer or 0-dim integer tensor; not a bool."""
    try:
        operator.index(v)
    except TypeError:
        return False
    return not isinstance(v, bool)


def python_names(message: str) -> str:
    """``--flow-shift`` -> ``flow_shift`` in a message written for the command line."""
    return re.sub(r"--([a-z][a-z0-9-]*)", lambda m: m.group(1).replace("-", "_"), message)
