"""The ``cpu`` backend: the fused C++ kernel (``csrc/amf_cpu.cpp``) behind an autograd Function.

Importing this module loads no native code: :mod:`ditflow_fast._native` loads the extension when
the dispatcher first asks whether the backend can run, and its reason becomes the backend's
``unavailable`` when the extension is missing or switched off.

Forward: one pass over the scores, blocked over query tiles x key frames, each score tile reduced
while it is in cache (argmax, or the online soft-argmax with its log-sum-exp). Backward (soft mode):
the probabilities are recomputed from the stored log-sum-exp ``[B, N, F]``, as flash attention does.
Extra memory is ``O(N * F)`` plus a few cache-sized tiles, never ``N x N``, except that the soft
forward keeps its raw scores for the backward when they fit in a quarter of the available memory
(:func:`keep_scores_budget`).

Inputs are gathered once into heads-concatenated ``[B, N, H*d]`` copies: bf16 stays bf16 where the
CPU has AVX512-BF16 (the kernel's own bf16 x bf16 -> float32 tiles, ``csrc/amf_cpu_bf16.h``; the
backward's gradient GEMMs run in bf16, ``backward_bf16`` in ``csrc/amf_cpu.cpp``), every other dtype
becomes float32 (float64 for float64 input), as in the torch backend. Gathering float32 or float64 input also
finds ``max|q|`` and ``max|k|`` for the value checks, so q and k are read once (``csrc/amf_cpu_gather.h``). The
copies, the kernel's own large temporaries and the gradients it hands back live in scratch buffers kept
between calls (``csrc/amf_cpu_scratch.h``: at most ``DITFLOW_FAST_CPU_SCRATCH_MB``, by default 64 MiB or an
eighth of the available memory, whichever is more; never shared while in use; :func:`release_scratch` frees
them). The argmax screens scores with a bf16 GEMM and rescores the candidates in float64 where the CPU
multiplies bf16 natively (exact argmax; ``csrc/amf_cpu_screen.h``; bf16 inputs are screened as they are).
"""

from __future__ import annotations

import functools
import os

import torch

from .. import _native
from .._problem import AMFProblem, check_maxima, check_values, no_autocast
from ..dispatch import Backend, once_differentiable, register
from ..hostmem import available_bytes as _available_bytes
from .layout import displacement, expand_grad, from_output_layout, grad_is_head_major
from .ranking import AUTO_RANK


def _soft_alpha(p: AMFProblem) -> float:
    return p.temperature * p.logit_scale


def release_scratch() -> int:
    """Free the buffers the ``cpu`` kernel keeps between calls; returns their bytes (0 if none or not loaded).

    One still in use (a copy saved for a pending backward) is freed when its last user lets go of it.
    """
    if not _native.is_loaded():  # nothing kept, and no reason to load the extension for it
        return 0
    return int(_native.ops().release_scratch())


def _gather(t: torch.Tensor, p: AMFProblem, slot: int) -> torch.Tensor:
    """``[B, H, T, d]`` -> ``[B, N, H*d]`` video tokens for the kernel: a view where the layout allows, else a
    copy into the kernel's scratch slot (0 for q, 1 for k), which later calls reuse once this one is done
    with it, instead of faulting in fresh pages each call (``csrc/amf_cpu_scratch.h``)."""
    b, h, _, d = t.shape
    dtype = _gather_dtype(p)
    video = t[:, :, p.text_tokens:].permute(0, 2, 1, 3)
    if video.dtype == dtype and video.is_contiguous():
        return video.view(b, p.tokens, h * d)
    out = _native.ops().scratch(slot, [b, p.tokens, h * d], dtype)
    out.view(b, p.tokens, h, d).copy_(video)
    return out


def _gathered(p: AMFProblem) -> tuple[torch.Tensor, torch.Tensor]:
    """``qc, kc`` for the kernel, with the value checks of the eager path done (the backend ``checks_values``).

    float32 and float64 input that must be copied is copied by ``gather_checked``, which finds ``max|t|`` in the
    same pass: at cpu-5b on the Intel Xeon of session 20, 4.3 ms against 6.2 to 6.6 ms as two passes, of a 44 ms
    soft forward.
    """
    q, k = p.q.detach(), p.k.detach()
    fused = q.dtype == k.dtype == _gather_dtype(p) and q.dtype in (torch.float32, torch.float64)
    if not fused or any(t[:, :, p.text_tokens:].permute(0, 2, 1, 3).is_contiguous() for t in (q, k)):
        check_values(p)  # a [B, T, H, d] input is its own gathered copy: one read, the check's
        return _gather(q, p, 0), _gather(k, p, 1)
    gather = _native.ops().gather_checked
    (qc, qmax), (kc, kmax) = gather(q, p.text_tokens, 0), gather(k, p.text_tokens, 1)
    check_maxima(p, qmax, kmax)
    return qc, kc


def _gather_dtype(p: AMFProblem) -> torch.dtype:
    """The dtype of the concatenated copies: bf16 where the kernel multiplies it, else the compute dtype."""
    if p.q.dtype == torch.bfloat16 and _native.ops().bf16_gemm_enabled():
        return torch.bfloat16
    return p.out_dtype


TRANSPOSED_MAX_TOKENS = 2048  # video tokens up to which the soft backward asks for [B, D, N] gradients


@functools.cache
def _intel_cpu() -> bool:
    """Whether /proc/cpuinfo names an Intel CPU (False where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("vendor_id") and "GenuineIntel" in line for line in f)
    except OSError:
        return False


KEEP_FRACTION = 0.25  # of the memory available when the forward runs


def keep_scores_budget() -> int:
    """Bytes of raw scores ``[B, N, N]`` the soft forward may keep for its backward.

    Keeping them spares the backward its recompute GEMM (a quarter of the soft forward+backward's work).
    The rule: a quarter of the memory available right now (``MemAvailable``), at least 64 MiB, so a 13 GiB
    machine keeps the 262 MB scores of 6 CogVideoX latent frames and a crowded one falls back to
    recomputing. ``DITFLOW_FAST_CPU_KEEP_SCORES_MB`` sets the budget instead (0 turns keeping off).
    """
    raw = os.environ.get("DITFLOW_FAST_CPU_KEEP_SCORES_MB", "").strip()
    if not raw:
        return max(64 << 20, int(KEEP_FRACTION * (_available_bytes() or 0)))
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
        qc, kc = _gathered(problem)
        args = (qc, kc, problem.frames, problem.height, problem.width, _soft_alpha(problem))
        if keep:
            target, lse, scores = _native.ops().amf_forward_scores(*args)
        else:
            (target, lse), scores = _native.ops().amf_forward(*args, True), None
        # The concatenated copies are kept for the backward (re-gathering them costs a pass over q and k
        # each); when q and k arrive as [B, T, H, d] views they are views, not copies.
        ctx.save_for_backward(q, k, qc, kc, target, lse, scores)
        ctx.problem = problem
        return displacement(target, problem)

    @staticmethod
    @once_differentiable("cpu")
    @no_autocast
    def backward(ctx, grad_out):
        q, k, qc, kc, target, lse, scores = ctx.saved_tensors
        p = ctx.problem
        want_q, want_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g = from_output_layout(grad_out.to(target.dtype), p).contiguous()  # pos(m) carries no gradient
        # [B, D, N] gradients: on the AMD EPYC of session 17 the GEMMs ran 4 to 10% faster at N = 1,320 and 1,800,
        # but 25% slower from 3,300 up (6 CogVideoX frames: 17%), and re-laid out per head into [B, H, T, d] they
        # cost 1 ms more to copy; into [B, T, H, d] the whole-matrix transpose would cost 9 ms
        # (docs/runs/transposed_grads). On the Intel Xeon of session 20 the whole fwd+bwd at cpu-5b took 3.41x and
        # 3.45x of the GEMM that way against 3.30x and 3.33x with [B, N, D] gradients: there they are not asked for.
        transposed = (p.tokens <= TRANSPOSED_MAX_TOKENS and grad_is_head_major(q) and grad_is_head_major(k)
                      and not _intel_cpu())
        dqc, dkc = _native.ops().amf_backward(
            qc, kc, target, lse, g, p.frames, p.height, p.width, _soft_alpha(p), want_q, want_k, scores, transposed
        )
        return _expand(dqc, q, p, 12) if want_q else None, _expand(dkc, k, p, 13) if want_k else None, None, None


def _expand(dcat: torch.Tensor, like: torch.Tensor, p: AMFProblem, slot: int) -> torch.Tensor:
    """:func:`expand_grad` into the kernel's scratch slot (12 for q, 13 for k): the gradient is a fresh buffer to
    autograd, yet its pages are faulted in already once an earlier call's gradient has been let go."""
    return expand_grad(dcat, like, p, lambda shape, dtype: _native.ops().scratch(slot, list(shape), dtype))


def amf_cpu(problem: AMFProblem) -> torch.Tensor:
    """AMF ``[B, F, F, h*w, 2]`` by the fused CPU kernel (float32, or float64 for float64 input)."""
    if problem.mode == "soft":
        grad = torch.is_grad_enabled() and (problem.q.requires_grad or problem.k.requires_grad)
        elem = torch.finfo(problem.out_dtype).bits // 8
        keep = grad and problem.batch * problem.tokens**2 * elem <= keep_scores_budget()
        return _CpuSoftAMF.apply(problem.q, problem.k, problem, keep)
    with torch.no_grad():
        qc, kc = _gathered(problem)
        target, _ = _native.ops().amf_forward(qc, kc, problem.frames, problem.height, problem.width, 1.0, False)
        return displacement(target, problem)


register(Backend(
    name="cpu",
    summary="fused C++ kernel: GEMM score tiles reduced in cache (argmax: exact bf16 screen); the backward reuses "
            "the forward's scores where memory allows, else recomputes them",
    run=amf_cpu,
    devices=("cpu",),
    dtypes=(torch.float32, torch.float64, torch.bfloat16, torch.float16),
    auto_rank=AUTO_RANK["cpu"],
    unavailable=_native.why_unavailable,
    checks_values=True,
))
