"""The ``torch`` backend: exact AMF, chunked over query rows, on any device torch runs on.

(Named ``torch_chunked``, not ``torch``, so that no module of the package carries a library's name;
see :mod:`ditflow_fast.backends`.)

Extra memory is bounded by a byte budget instead of growing with ``N^2``: each chunk of ``R``
query rows scores against all ``N`` keys (``R x N`` floats), reduces per target frame, and is
dropped before the next. The backward recomputes each chunk's probabilities from the stored
log-sum-exp, as flash attention does, so nothing of size ``N x N`` is kept between the passes.

Scores are accumulated in float32 (float64 for float64 input) on the heads-concatenated
vectors: ``S = Q_cat @ K_cat^T / (H * sqrt(d))``, one GEMM instead of ``H`` small ones.
"""

from __future__ import annotations

import torch

from .._problem import FLOAT_DTYPES, AMFProblem, no_autocast
from ..dispatch import Backend, once_differentiable, register
from ..geometry import patch_coords
from .layout import concat_heads, displacement, expand_grad, from_output_layout
from .ranking import AUTO_RANK

# Room for the AMF next to CogVideoX-5B on a 24 GB GPU: the bf16 weights take ~11 GB and the
# checkpointed activations most of the rest. 256 MiB still gives chunks of ~4,000 query rows at
# 6 latent frames (~1,900 at 13), large enough that the GEMM, not the loop, sets the speed.
DEFAULT_BUDGET_BYTES = 256 << 20
# Live R x N buffers per chunk: forward keeps one, backward two (probabilities and g.pos).
_LIVE_BUFFERS = 2


def chunk_rows_for(problem: AMFProblem, budget_bytes: int) -> int:
    """Query rows per chunk so that the chunk's ``R x N`` buffers fit ``budget_bytes``."""
    elem = 8 if problem.out_dtype == torch.float64 else 4
    return max(1, min(problem.tokens, budget_bytes // (_LIVE_BUFFERS * problem.tokens * elem)))


def _forward(p: AMFProblem, qc, kc, rows: int, soft: bool):
    """Per-query targets ``[B, N, F, 2]`` and, in soft mode, the log-sum-exp ``[B, N, F]``."""
    b, n, _ = qc.shape
    pos = patch_coords(p.height, p.width, device=qc.device, dtype=qc.dtype)
    target = qc.new_empty(b, n, p.frames, 2)
    lse = qc.new_empty(b, n, p.frames) if soft else None
    alpha = p.temperature * p.logit_scale
    for bi in range(b):
        kt = kc[bi].t()
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            if soft:
                z = (qc[bi, r0:r1] * alpha).matmul(kt).view(r1 - r0, p.frames, p.patches)
                zmax = z.amax(dim=-1, keepdim=True)
                e = z.sub_(zmax).exp_()
                norm = e.sum(dim=-1)
                target[bi, r0:r1] = (e @ pos) / norm.unsqueeze(-1)
                lse[bi, r0:r1] = zmax.squeeze(-1) + norm.log()
            else:
                s = qc[bi, r0:r1].matmul(kt).view(r1 - r0, p.frames, p.patches)
                target[bi, r0:r1] = pos[s.argmax(dim=-1)]  # first maximum wins ties
    return target, lse


class _SoftAMF(torch.autograd.Function):
    @staticmethod
    @no_autocast
    def forward(ctx, q, k, problem: AMFProblem, rows: int):
        cdtype = problem.out_dtype
        qc = concat_heads(q, problem.text_tokens, cdtype)
        kc = concat_heads(k, problem.text_tokens, cdtype)
        target, lse = _forward(problem, qc, kc, rows, soft=True)
        ctx.save_for_backward(q, k, target, lse)
        ctx.problem, ctx.rows = problem, rows
        return displacement(target, problem)

    @staticmethod
    @once_differentiable("torch")
    @no_autocast
    def backward(ctx, grad_out):
        q, k, target, lse = ctx.saved_tensors
        p, rows = ctx.problem, ctx.rows
        want_q, want_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        cdtype = target.dtype
        qc = concat_heads(q, p.text_tokens, cdtype)
        kc = concat_heads(k, p.text_tokens, cdtype)
        g = from_output_layout(grad_out.to(cdtype), p)  # [B, N, F, 2]; pos(m) has no gradient
        pos = patch_coords(p.height, p.width, device=q.device, dtype=cdtype)
        alpha = p.temperature * p.logit_scale
        dqc = torch.zeros_like(qc) if want_q else None
        dkc = torch.zeros_like(kc) if want_k else None
        b, n, _ = qc.shape
        for bi in range(b):
            for r0 in range(0, n, rows):
                r1 = min(n, r0 + rows)
                z = (qc[bi, r0:r1] * alpha).matmul(kc[bi].t()).view(r1 - r0, p.frames, p.patches)
                prob = z.sub_(lse[bi, r0:r1].unsqueeze(-1)).exp_()
                gb = g[bi, r0:r1]  # [R, F, 2]
                g_dot_pos = gb @ pos.t()  # [R, F, hw]: <g, pos(n)>
                g_dot_o = (gb * target[bi, r0:r1]).sum(dim=-1, keepdim=True)
                dz = prob.mul_(g_dot_pos.sub_(g_dot_o)).view(r1 - r0, n)
                # Chunks are visited in a fixed order, so the dK accumulation is deterministic.
                if want_q:
                    dqc[bi, r0:r1] = alpha * (dz @ kc[bi])
                if want_k:
                    dkc[bi].addmm_(dz.t(), qc[bi, r0:r1], alpha=alpha)
        return expand_grad(dqc, q, p), expand_grad(dkc, k, p), None, None


def amf_torch(problem: AMFProblem, *, chunk_rows: int | None = None, budget_bytes: int = DEFAULT_BUDGET_BYTES):
    """AMF ``[B, F, F, h*w, 2]`` by the chunked torch backend.

    ``chunk_rows`` fixes the number of query rows per chunk (any value >= 1; it need not divide
    ``N``); otherwise it is derived from ``budget_bytes``.
    """
    if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1):
        raise ValueError(f"chunk_rows must be an int >= 1, got {chunk_rows!r}")
    if budget_bytes < 1:
        raise ValueError(f"budget_bytes must be >= 1, got {budget_bytes}")
    rows = chunk_rows or chunk_rows_for(problem, budget_bytes)
    if problem.mode == "soft":
        return _SoftAMF.apply(problem.q, problem.k, problem, rows)
    with torch.no_grad():
        cdtype = problem.out_dtype
        qc = concat_heads(problem.q, problem.text_tokens, cdtype)
        kc = concat_heads(problem.k, problem.text_tokens, cdtype)
        target, _ = _forward(problem, qc, kc, rows, soft=False)
        return displacement(target, problem)


register(Backend(
    name="torch",
    summary="chunked over query rows under a byte budget, recomputing backward; any device",
    run=amf_torch,
    devices=("cpu", "cuda", "mps", "xpu"),
    dtypes=FLOAT_DTYPES,
    auto_rank=AUTO_RANK["torch"],
))
