"""Registers the backends that need nothing beyond torch: ``reference`` and ``torch``."""

from __future__ import annotations

import torch

from .dispatch import Backend, register
from .reference import amf_reference
from .torch_backend import amf_torch

_ALL_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _run_reference(p):
    out = amf_reference(
        p.q, p.k, frames=p.frames, height=p.height, width=p.width,
        temperature=p.temperature, mode=p.mode, text_tokens=p.text_tokens,
    )
    return out.to(p.out_dtype)


register(Backend(
    name="reference",
    summary="literal definition in float64, materialises [B, H, N, N] scores (test oracle)",
    run=_run_reference,
    devices=("cpu", "cuda"),
    dtypes=_ALL_FLOATS,
))

register(Backend(
    name="torch",
    summary="chunked over query rows under a byte budget, recomputing backward; any device",
    run=amf_torch,
    devices=("cpu", "cuda", "mps", "xpu"),
    dtypes=_ALL_FLOATS,
    auto_rank=100,
))

try:  # the fused CPU kernel's backend; it loads its extension lazily, so this import never compiles
    from . import cpu_backend  # noqa: F401
except ImportError:
    pass

try:  # the fused Triton kernels: registers "triton" (imports triton only when a kernel launches)
    from . import triton_backend  # noqa: F401
except ImportError:  # pragma: no cover - a broken optional install must not break `import ditflow_fast`
    pass
