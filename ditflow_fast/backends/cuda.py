"""The ``cuda`` backend: the tensor-core forward (``csrc/amf_cuda.cu``) of the native extension.

Present only when the extension was built with CUDA (a CUDA torch and ``CUDA_HOME`` at build
time); it shares the loader (:mod:`ditflow_fast._native`) with the ``cpu`` backend. Forward only:
bf16/fp16 heads-concatenated inputs, fp32 accumulation, float32 output.
"""

from __future__ import annotations

import torch

from .. import _native
from .._problem import AMFProblem
from ..dispatch import Backend, register
from .layout import concat_heads, displacement
from .ranking import AUTO_RANK


def _unavailable() -> str | None:
    why = _native.why_unavailable()
    if why:
        return why
    if not _native.has_cuda_kernels():
        return "the native extension was built without CUDA kernels (needs a CUDA torch and CUDA_HOME at build time)"
    return None


def amf_cuda(problem: AMFProblem) -> torch.Tensor:
    """AMF ``[B, F, F, h*w, 2]`` float32 by the CUDA forward (bf16/fp16 in, fp32 accumulation; no gradient)."""
    with torch.no_grad():
        qc = concat_heads(problem.q, problem.text_tokens, problem.q.dtype).contiguous()
        kc = concat_heads(problem.k, problem.text_tokens, problem.k.dtype).contiguous()
        alpha = problem.temperature * problem.logit_scale if problem.mode == "soft" else 1.0
        target, _ = _native.ops().amf_forward(
            qc, kc, problem.frames, problem.height, problem.width, alpha, problem.mode == "soft"
        )
        return displacement(target, problem)


register(Backend(
    name="cuda",
    summary="CUDA forward on tensor cores (WMMA bf16/fp16, fp32 accumulate); forward only (csrc/amf_cuda.cu)",
    run=amf_cuda,
    devices=("cuda",),
    dtypes=(torch.bfloat16, torch.float16),
    differentiable=False,
    auto_rank=AUTO_RANK["cuda"],
    unavailable=_unavailable,
))
