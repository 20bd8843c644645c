"""One benchmark case as data (:class:`CaseSpec`) and its seeded inputs; imports nothing else of the harness.

A case is one row of the registry (:mod:`ditflow_fast.bench.rows`) in one mode on one preset:

* ``impl``: a row name: a registered backend, ``"research"``, ``"gemm"`` (the floor), ``"gemm_fp32"`` (its
  float32 yardstick in CPU bf16 runs), ``"gemm_onednn"`` (the float32 floor through oneDNN) or a peer;
* ``mode``: ``"argmax"`` or ``"soft"`` (forward only, no autograd graph) or ``"soft_fwd_bwd"``
  (soft forward plus backward with a fixed random upstream gradient); the floor's mode is ``"gemm"``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from ..geometry import AMFGeometry
from .presets import get_preset

MODES = ("argmax", "soft", "soft_fwd_bwd")
RESEARCH = "research"
FLOOR = "gemm"
FLOOR_FP32 = "gemm_fp32"  # the float32 GEMM beside a CPU bf16 run's bf16 floor
FLOOR_ONEDNN = "gemm_onednn"  # the float32 floor through oneDNN, beside MKL's, in CPU float32 runs
TEMPERATURE = 2.0  # DiTFlow's tau; it does not change the cost
# How q and k lie in memory: "bhtd" contiguous [B, H, T, d] (what CogVideoX's processor hands over), "bthd" a
# [B, H, T, d] view of a [B, T, H, d] tensor (what the Wan, LTX-Video and HunyuanVideo processors hand over).
LAYOUTS = ("bhtd", "bthd")


@dataclass(frozen=True)
class CaseSpec:
    """Everything needed to rebuild a case in another process (the memory probe)."""

    impl: str
    mode: str
    preset: str
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    # (frames, height, width) in place of the preset's: the reduced problem of the reference check.
    shape: tuple[int, int, int] | None = None
    layout: str = "bhtd"

    @property
    def id(self) -> str:
        return f"{self.impl}-{self.mode}"

    @property
    def torch_dtype(self) -> torch.dtype:
        return parse_dtype(self.dtype)

    @property
    def amf_mode(self) -> str:
        """The ``compute_amf`` mode of an AMF case: ``"argmax"``, or ``"soft"`` for both soft modes."""
        return "argmax" if self.mode == "argmax" else "soft"

    @property
    def geometry(self) -> AMFGeometry:
        """The preset's geometry, with ``shape``'s frames and patches when the case is reduced."""
        g = get_preset(self.preset).geometry
        if self.shape is None:
            return g
        f, h, w = self.shape
        return replace(g, frames=f, height=h, width=w)

    def reduced(self, frames: int, height: int, width: int) -> CaseSpec:
        """The same case (impl, mode, dtype, device, heads, head size, text prefix) on fewer frames/patches."""
        g = get_preset(self.preset).geometry
        same = (frames, height, width) == (g.frames, g.height, g.width)
        return replace(self, shape=None if same else (frames, height, width))

    def as_dict(self) -> dict:
        d = asdict(self)
        if d["shape"] is None:
            del d["shape"]  # the timed rows run the preset itself
        return d


def parse_dtype(name: str) -> torch.dtype:
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64, "fp64": torch.float64}
    if name not in table:
        raise ValueError(f"dtype must be one of {sorted(table)}, got {name!r}")
    return table[name]


def elem_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def make_inputs(spec: CaseSpec, *, requires_grad: bool = False, empty: bool = False):
    """``q, k`` of shape ``[1, H, text + N, d]`` for the preset (seeded normal; ``empty`` skips filling), laid
    out as ``spec.layout`` says; the values do not depend on the layout."""
    if spec.layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {spec.layout!r}")
    shape = spec.geometry.qk_shape
    kw = dict(dtype=spec.torch_dtype, device=spec.device)
    if empty:
        q, k = torch.empty(shape, **kw), torch.empty(shape, **kw)
    else:
        gen = torch.Generator(device=spec.device).manual_seed(spec.seed)
        q = torch.randn(shape, generator=gen, **kw)
        k = torch.randn(shape, generator=gen, **kw)
    if spec.layout == "bthd":  # detached: a leaf, whose .grad the backward fills
        q, k = (t.transpose(1, 2).contiguous().transpose(1, 2).detach() for t in (q, k))
    return q.requires_grad_(requires_grad), k.requires_grad_(requires_grad)


def upstream_grad(spec: CaseSpec, device) -> torch.Tensor:
    """The fixed random upstream gradient of a soft fwd+bwd case, float32, in the package's output layout
    ``[1, F, F, hw, 2]``; a row with another layout of the same elements (the research code's
    ``[F*F, hw, 2]``) takes it reshaped, which keeps every element where it was."""
    gen = torch.Generator(device=device).manual_seed(1)
    return torch.randn(spec.geometry.out_shape, generator=gen, device=device, dtype=torch.float32)
