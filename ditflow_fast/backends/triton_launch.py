"""The ``triton`` backend: launchers for the fused kernels in ``ditflow_fast.kernels``, autograd, registration.

(Named ``triton_launch``, not ``triton``, so that no module of the package carries a library's name;
see :mod:`ditflow_fast.backends`.)

:func:`forward` and :func:`backward` launch the kernels on a validated :class:`AMFProblem`;
:func:`amf_triton` is the backend entry (a custom autograd Function in soft mode). Triton is
imported only when a kernel launches, so ``import ditflow_fast`` works without it, and the
backend reports why it cannot run (no triton, no CUDA) instead of failing at import.

On a GPU the kernels are autotuned; with ``TRITON_INTERPRET=1`` the same launchers run the
kernels on CPU tensors through Triton's interpreter with a fixed configuration, computing in
fp32 (the interpreter gets bf16 arithmetic wrong). That is how the tests check them here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math

import torch

from .._problem import AMFProblem, no_autocast
from ..dispatch import Backend, once_differentiable, register
from ..geometry import patch_coords
from .layout import expand_grad
from .ranking import AUTO_RANK

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LOG2E = 1.4426950408889634
# Backward workspace (chunk rows x N logit gradients): with 1 GiB every CogVideoX/Wan shape of
# the spec runs in one or two chunks.
DEFAULT_BUDGET_BYTES = 1 << 30
# Largest magnitude a half-precision workspace entry is scaled to (fp16 overflows past 65504).
_HALF_RANGE = 2.0**14


def unavailable() -> str | None:
    """None when the Triton kernels can run here, else why not."""
    # Asked on every "auto" dispatch, so it must not import triton: triton reads TRITON_INTERPRET
    # when imported, and an early import would fix that choice for the process.
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'triton>=3.6,<3.9')"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    return None


def _settings(dtype: torch.dtype, device: torch.device):
    """(interpreting, UPCAST, PRECISION) for inputs of ``dtype`` on ``device``: tiles are upcast to
    fp32 on load exactly when interpreting (the interpreter computes bf16 on raw bits)."""
    from ditflow_fast.kernels._jit import interpreting

    interp = interpreting()
    if not interp and device.type != "cuda":
        raise ValueError(f"the Triton kernels need CUDA tensors (got {device.type}); set TRITON_INTERPRET=1 "
                         "before the first launch to run them on the CPU through Triton's interpreter")
    if dtype not in DTYPES:
        raise TypeError(f"the Triton kernels take float32, float16 or bfloat16 q/k, got {dtype}")
    # fp32 inputs must agree to 1e-5 with the float64 reference, which TF32 (10-bit mantissa) cannot.
    precision = "ieee" if (interp or dtype == torch.float32) else "tf32"
    return interp, interp, precision


def _alloc(*shape, device, dtype=torch.float32) -> torch.Tensor:
    """Every buffer a kernel must fill completely (tests poison it here to prove it is)."""
    return torch.empty(*shape, device=device, dtype=dtype)


def _interp_blocks(head_dim: int) -> dict:
    """Fixed tiles under the interpreter: large, since it pays per program and per K-step
    (``tl.dot`` needs every tile dimension >= 16; ``BLOCK_K`` beyond ``d`` is masked)."""
    bk = min(64, max(16, 1 << max(0, (head_dim - 1).bit_length())))
    return {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": bk}


def _launch(fn, grid, args, consts, config, configs, key, restore=()):
    """Launch ``fn`` with an explicit ``config`` (tiles + optional num_warps/num_stages) or autotuned."""
    from ditflow_fast.kernels._jit import kernel

    if config is not None:
        kern = kernel(fn)
        kern[grid](*args, **consts, **config)
    else:
        kern = kernel(fn, configs=configs, key=key, restore_value=restore)
        kern[grid](*args, **consts)


def forward(p: AMFProblem, *, config: dict | None = None):
    """Displacements ``[B, F, F, h*w, 2]`` float32 and, in soft mode, the log-sum-exp ``[B, N, F]``.

    ``config`` fixes the tiles (``BLOCK_M``, ``BLOCK_N``, ``BLOCK_K``, optionally ``num_warps``,
    ``num_stages``); by default they are autotuned on a GPU and fixed under the interpreter.
    """
    from ditflow_fast.kernels import amf_fwd

    q, k = p.q, p.k
    interp, upcast, precision = _settings(q.dtype, q.device)
    b, heads, _, d = q.shape
    f, hw = p.frames, p.patches
    soft = p.mode == "soft"
    out = _alloc(b, f, f, hw, 2, device=q.device)
    lse = _alloc(b, p.tokens, f, device=q.device) if soft else out
    if config is None and interp:
        config = _interp_blocks(d)

    def grid(meta):
        return (math.ceil(hw / meta["BLOCK_M"]), f * f, b)

    args = (q, k, out, lse, *q.stride(), *k.stride(), p.text_tokens, f, hw, p.width, heads,
            p.temperature * p.logit_scale * LOG2E)
    consts = dict(HEAD_DIM=d, SOFT=soft, UPCAST=upcast, PRECISION=precision)
    _launch(amf_fwd.amf_fwd_kernel, grid, args, consts, config, amf_fwd.FWD_CONFIGS, amf_fwd.FWD_KEY)
    return out, (lse if soft else None)


def _range_scale(g: torch.Tensor, p: AMFProblem, alpha: float) -> float:
    """Power of two that brings ``alpha * |dz|`` under ``_HALF_RANGE`` for a half-precision workspace.

    ``|dz[m,n]| <= P * |g| * (|pos(n)| + |o|) <= |g| * 2 * hypot(w-1, h-1)`` because ``P <= 1`` and
    both points lie in the frame; scaling up to that bound keeps small entries out of fp16's
    subnormal range (loss gradients can be ~1e-6) and large ones under its maximum.
    """
    gmax = float(g.norm(dim=-1).amax()) if g.numel() else 0.0
    bound = alpha * gmax * 2.0 * max(1.0, math.hypot(p.width - 1, p.height - 1))
    if bound <= 0.0 or not math.isfinite(bound):
        return 1.0
    return 2.0 ** math.floor(math.log2(_HALF_RANGE / bound))


def backward(p: AMFProblem, out, lse, grad, *, want_q=True, want_k=True, budget_bytes=DEFAULT_BUDGET_BYTES,
             config: dict | None = None, workspace_dtype: torch.dtype | None = None):
    """``(dq, dk)`` shaped like ``q``/``k`` (zero on text tokens) for the soft AMF ``out`` of ``p``.

    ``out`` and ``lse`` are :func:`forward`'s outputs, ``grad`` the upstream gradient
    ``[B, F, F, h*w, 2]`` (any strides). ``budget_bytes`` bounds the logit-gradient workspace;
    ``config`` fixes the tiles of all three kernels (``BLOCK_M``/``BLOCK_N``/``BLOCK_K``; the GEMM
    takes ``BLOCK_M`` as its row tile and ``BLOCK_N`` as its column tile). ``workspace_dtype``
    overrides the workspace precision (float32 for fp32 input or the interpreter, else the input
    dtype), so the tests can run the half-precision path with its range scale on the CPU.
    """
    from ditflow_fast.kernels import amf_bwd

    q, k = p.q, p.k
    interp, upcast, precision = _settings(q.dtype, q.device)
    if budget_bytes < 1:
        raise ValueError(f"budget_bytes must be >= 1, got {budget_bytes}")
    b, heads, _, d = q.shape
    f, hw, n, cols, text = p.frames, p.patches, p.tokens, heads * d, p.text_tokens
    alpha = p.temperature * p.logit_scale
    g = grad.to(torch.float32)
    pos = patch_coords(p.height, p.width, device=q.device, dtype=torch.float32)
    g_dot_o = (g * (out + pos)).sum(-1)  # <g, o> with o = D + pos(s): [B, Fi, Fj, hw]
    g_dot_o = g_dot_o.permute(0, 1, 3, 2).reshape(b, n, f).contiguous()  # [B, N, F] like lse

    ws_dtype = workspace_dtype or (torch.float32 if (interp or q.dtype == torch.float32) else q.dtype)
    range_scale = 1.0 if ws_dtype == torch.float32 else _range_scale(g, p, alpha)
    elem = torch.empty((), dtype=ws_dtype).element_size()
    chunk_frames = max(1, min(f, budget_bytes // (hw * n * elem)))
    ws = _alloc(chunk_frames * hw, n, device=q.device, dtype=ws_dtype)
    dq_cat = _alloc(b, n, cols, device=q.device) if want_q else None
    dk_cat = _alloc(b, n, cols, device=q.device) if want_k else None

    if config is None and interp:
        config = _interp_blocks(d)
    dz_cfg = config
    gemm_cfg = None
    if config is not None:
        gemm_cfg = {k_: v for k_, v in config.items() if k_ not in ("BLOCK_M", "BLOCK_N")}
        gemm_cfg.update(BLOCK_R=config["BLOCK_M"], BLOCK_C=config["BLOCK_N"])
    common = dict(UPCAST=upcast, PRECISION=precision)

    for bi in range(b):
        qb, kb = q[bi], k[bi]
        for i0 in range(0, f, chunk_frames):
            nf = min(chunk_frames, f - i0)
            rows = nf * hw

            def dz_grid(meta, nf=nf):
                return (nf * math.ceil(hw / meta["BLOCK_M"]), f * math.ceil(hw / meta["BLOCK_N"]))

            args = (qb, kb, lse[bi], g[bi], g_dot_o[bi], ws, *qb.stride(), *kb.stride(), *g[bi].stride(),
                    i0, text, f, hw, p.width, heads, n, alpha * LOG2E, alpha * range_scale)
            _launch(amf_bwd.amf_dz_kernel, dz_grid, args, dict(HEAD_DIM=d, **common), dz_cfg,
                    amf_bwd.DZ_CONFIGS, amf_bwd.DZ_KEY)
            if want_q:  # rows of this chunk, reduced over every key: dQ = c * dz @ K_cat
                kv = kb[:, text:]
                args = (ws, kv, dq_cat[bi, i0 * hw:], n, 1, kv.stride(1), kv.stride(0), kv.stride(2), cols,
                        rows, cols, n, 1.0 / range_scale)
                _gemm(amf_bwd, args, rows, cols, d, False, common, gemm_cfg)
            if want_k:  # every key, reduced over this chunk's rows: dK += c * dz^T @ Q_cat[chunk]
                qv = qb[:, text + i0 * hw:]
                args = (ws, qv, dk_cat[bi], 1, n, qv.stride(1), qv.stride(0), qv.stride(2), cols,
                        n, cols, rows, 1.0 / range_scale)
                _gemm(amf_bwd, args, n, cols, d, i0 > 0, common, gemm_cfg)
    return expand_grad(dq_cat, q, p), expand_grad(dk_cat, k, p)


def _gemm(amf_bwd, args, rows, cols, d, accumulate, common, config):
    def grid(meta):
        return (math.ceil(rows / meta["BLOCK_R"]), math.ceil(cols / meta["BLOCK_C"]))

    _launch(amf_bwd.amf_dz_gemm_kernel, grid, args, dict(HEAD_DIM=d, ACCUMULATE=accumulate, **common), config,
            amf_bwd.GEMM_CONFIGS, amf_bwd.GEMM_KEY, amf_bwd.GEMM_RESTORE)


class _TritonSoftAMF(torch.autograd.Function):
    @staticmethod
    @no_autocast
    def forward(ctx, q, k, problem: AMFProblem):
        out, lse = forward(problem)
        ctx.save_for_backward(q, k, out, lse)
        ctx.problem = problem
        return out

    @staticmethod
    @once_differentiable("triton")
    @no_autocast
    def backward(ctx, grad_out):
        q, k, out, lse = ctx.saved_tensors
        p = dataclasses.replace(ctx.problem, q=q, k=k)
        dq, dk = backward(p, out, lse, grad_out, want_q=ctx.needs_input_grad[0], want_k=ctx.needs_input_grad[1])
        return dq, dk, None


def amf_triton(problem: AMFProblem) -> torch.Tensor:
    """AMF ``[B, F, F, h*w, 2]`` float32 by the fused Triton kernels (differentiable in soft mode)."""
    if problem.mode == "soft":
        return _TritonSoftAMF.apply(problem.q, problem.k, problem)
    with torch.no_grad():
        return forward(problem)[0]


register(Backend(
    name="triton",
    summary="fused Triton forward (argmax and soft) and soft backward; CUDA, fp32/fp16/bf16",
    run=amf_triton,
    devices=("cuda",),
    dtypes=DTYPES,
    auto_rank=AUTO_RANK["triton"],
    unavailable=unavailable,
))
