"""The native backends: ``cpu``, the fused C++ kernel (``csrc/amf_cpu.cpp``) behind an autograd
Function, and ``cuda``, the tensor-core forward (``csrc/amf_cuda.cu``) when the extension was built
with CUDA.

Forward: one pass over the scores, blocked over query tiles x key frames, each score tile reduced
while it is in cache (argmax, or the online soft-argmax with its log-sum-exp). Backward (soft mode):
the probabilities are recomputed from the stored log-sum-exp ``[B, N, F]``, as flash attention does.
Extra memory is ``O(N * F)`` plus a few cache-sized tiles, never ``N x N``, except that the soft
forward keeps its raw scores for the backward when they fit in 64 MiB (:func:`keep_scores_budget`).

Inputs of any float dtype are gathered once into heads-concatenated float32 (float64 for float64
input) ``[B, N, H*d]`` copies, as the torch backend does; bf16/fp16 are therefore computed in fp32.
The float32 argmax screens scores with a bf16 GEMM and rescores the candidates in float64 where
the CPU multiplies bf16 natively (exact argmax; ``csrc/amf_cpu_screen.h``).
"""

from __future__ import annotations

import os

import torch

from . import _native
from ._problem import AMFProblem, no_autocast
from .dispatch import Backend, register
from .geometry import patch_coords
from .torch_backend import _concat_heads, _from_output_layout, _to_output_layout

# Ahead of the torch backend (auto_rank 100) under "auto": in the committed benchmarks
# (benchmarks/results/amd-epyc-2c_*.txt, docs/native.md) the argmax is 1.6x faster or more (bf16
# screen) and the soft forward+backward 1.3x at the CPU-sized preset (kept scores), the soft
# forward is at parity (GEMM-bound), and the soft modes take less peak memory.
AUTO_RANK = 90


def _displacement(target: torch.Tensor, p: AMFProblem) -> torch.Tensor:
    """Absolute targets ``[B, N, F, 2]`` -> displacements in the output layout ``[B, F, F, h*w, 2]``."""
    own = patch_coords(p.height, p.width, device=target.device, dtype=target.dtype).repeat(p.frames, 1)
    return _to_output_layout(target - own[None, :, None, :], p)


def _grad_like(dcat: torch.Tensor, like: torch.Tensor, p: AMFProblem) -> torch.Tensor:
    """``[B, N, H*d]`` -> a gradient for ``like`` (``[B, H, T, d]``), zero on the text tokens.

    Laid out like ``like`` so that autograd passes it on without re-laying it out: a
    ``[B, T, H, d]`` buffer seen through ``permute`` when ``like`` is such a view (what a DiT's
    attention hands over; then the video part is one contiguous copy, or none without text
    tokens), a contiguous ``[B, H, T, d]`` tensor otherwise. Only the text rows are zero-filled.
    """
    b, h, _, d = like.shape
    video = dcat.reshape(b, p.tokens, h, d)
    if like.permute(0, 2, 1, 3).is_contiguous():
        if p.text_tokens == 0:
            return video.to(like.dtype).permute(0, 2, 1, 3)
        full = dcat.new_empty((b, p.text_tokens + p.tokens, h, d), dtype=like.dtype)
        full[:, :p.text_tokens].zero_()
        full[:, p.text_tokens:].copy_(video)
        return full.permute(0, 2, 1, 3)
    full = dcat.new_empty(like.shape, dtype=like.dtype)
    full[:, :, :p.text_tokens].zero_()
    full[:, :, p.text_tokens:].copy_(video.permute(0, 2, 1, 3))
    return full


def _soft_alpha(p: AMFProblem) -> float:
    return p.temperature * p.logit_scale


def keep_scores_budget() -> int:
    """Bytes of raw scores ``[B, N, N]`` the soft forward may keep for its backward (default 64 MiB).

    Keeping them spares the backward its recompute GEMM (a quarter of the soft forward+backward's
    work); the budget is the size of the backward's own row-chunk buffer, so at most it doubles
    that. ``DITFLOW_FAST_CPU_KEEP_SCORES_MB=0`` turns it off.
    """
    raw = os.environ.get("DITFLOW_FAST_CPU_KEEP_SCORES_MB", "64").strip()
    try:
        mb = float(raw)
    except ValueError:
        mb = float("nan")
    if not 0 <= mb < float("inf"):
        raise ValueError(f"DITFLOW_FAST_CPU_KEEP_SCORES_MB must be a number of MiB >= 0, got {raw!r}")
    return int(mb * (1 << 20))


class _CpuSoftAMF(torch.autograd.Function):
    @staticmethod
    @no_autocast
    def forward(ctx, q, k, problem: AMFProblem, keep: bool):
        cdtype = problem.out_dtype
        qc = _concat_heads(q, problem.text_tokens, cdtype)
        kc = _concat_heads(k, problem.text_tokens, cdtype)
        args = (qc, kc, problem.frames, problem.height, problem.width, _soft_alpha(problem))
        if keep:
            target, lse, scores = _native.ops().amf_forward_scores(*args)
        else:
            (target, lse), scores = _native.ops().amf_forward(*args, True), None
        # The concatenated copies are kept for the backward (re-gathering them costs a pass over q and k
        # each); when q and k arrive as [B, T, H, d] views they are views, not copies.
        ctx.save_for_backward(q, k, qc, kc, target, lse, scores)
        ctx.problem = problem
        return _displacement(target, problem)

    @staticmethod
    @no_autocast
    def backward(ctx, grad_out):
        q, k, qc, kc, target, lse, scores = ctx.saved_tensors
        p = ctx.problem
        want_q, want_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g = _from_output_layout(grad_out.to(target.dtype), p).contiguous()  # pos(m) carries no gradient
        dqc, dkc = _native.ops().amf_backward(
            qc, kc, target, lse, g, p.frames, p.height, p.width, _soft_alpha(p), want_q, want_k, scores
        )
        return (_grad_like(dqc, q, p) if want_q else None, _grad_like(dkc, k, p) if want_k else None, None, None)


def amf_cpu(problem: AMFProblem) -> torch.Tensor:
    """AMF ``[B, F, F, h*w, 2]`` by the fused CPU kernel (float32, or float64 for float64 input)."""
    if problem.mode == "soft":
        grad = torch.is_grad_enabled() and (problem.q.requires_grad or problem.k.requires_grad)
        elem = torch.finfo(problem.out_dtype).bits // 8
        keep = grad and problem.batch * problem.tokens**2 * elem <= keep_scores_budget()
        return _CpuSoftAMF.apply(problem.q, problem.k, problem, keep)
    with torch.no_grad():
        cdtype = problem.out_dtype
        qc = _concat_heads(problem.q, problem.text_tokens, cdtype)
        kc = _concat_heads(problem.k, problem.text_tokens, cdtype)
        target, _ = _native.ops().amf_forward(qc, kc, problem.frames, problem.height, problem.width, 1.0, False)
        return _displacement(target, problem)


def _cuda_unavailable() -> str | None:
    why = _native.why_unavailable()
    if why:
        return why
    if not _native.has_cuda_kernels():
        return "the native extension was built without CUDA kernels (needs a CUDA torch and CUDA_HOME at build time)"
    return None


def amf_cuda(problem: AMFProblem) -> torch.Tensor:
    """AMF ``[B, F, F, h*w, 2]`` float32 by the CUDA forward (bf16/fp16 in, fp32 accumulation; no gradient)."""
    with torch.no_grad():
        qc = _concat_heads(problem.q, problem.text_tokens, problem.q.dtype).contiguous()
        kc = _concat_heads(problem.k, problem.text_tokens, problem.k.dtype).contiguous()
        alpha = _soft_alpha(problem) if problem.mode == "soft" else 1.0
        target, _ = _native.ops().amf_forward(
            qc, kc, problem.frames, problem.height, problem.width, alpha, problem.mode == "soft"
        )
        return _displacement(target, problem)


register(Backend(
    name="cpu",
    summary="fused C++ kernel: GEMM score tiles reduced in cache (argmax: exact bf16 screen), recomputing backward",
    run=amf_cpu,
    devices=("cpu",),
    dtypes=(torch.float32, torch.float64, torch.bfloat16, torch.float16),
    auto_rank=AUTO_RANK,
    unavailable=_native.why_unavailable,
))

# Compiled and resource-checked here (no spills for sm_80/sm_90), but never run on a GPU yet: kept
# out of "auto" (auto_rank None) until the GPU tests have passed on real hardware.
register(Backend(
    name="cuda",
    summary="CUDA forward on tensor cores (WMMA bf16/fp16, fp32 accumulate); forward only (csrc/amf_cuda.cu)",
    run=amf_cuda,
    devices=("cuda",),
    dtypes=(torch.bfloat16, torch.float16),
    differentiable=False,
    auto_rank=None,
    unavailable=_cuda_unavailable,
))
