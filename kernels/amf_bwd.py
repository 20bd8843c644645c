"""AMF soft-mode backward: the logit gradient, then dQ and dK by two reductions of it.

With ``o[m,j]`` the soft target and ``g[m,j]`` the upstream gradient of query ``m`` towards
frame ``j``, the logit gradient is ``dz[m,n] = P[m,j,n] * (<g, pos(n)> - <g, o>)`` and
``dQ_cat = c * dz @ K_cat``, ``dK_cat = c * dz^T @ Q_cat`` with ``c = tau / (H sqrt(d))``.

Why this is not one flash-attention-style kernel: flash attention keeps the ``BLOCK x d`` dQ/dK
accumulators in registers because ``d`` is 64-128. Here the inner dimension is ``H*d`` (3072
for CogVideoX-5B): a ``128 x 3072`` fp32 accumulator does not fit on chip, and splitting it
over programs would recompute the scores once per column slice (24x the GEMM). So the
backward runs in query chunks, each with three kernels:

1. :func:`amf_dz_kernel` recomputes the logits of a ``BLOCK_M x BLOCK_N`` tile (by the forward's
   own ``score_tile``, so they are its logits bit for bit), the probabilities from the stored
   log-sum-exp, and writes ``c * dz`` (times a power-of-two range scale) into a workspace of
   ``chunk rows x N``. The probabilities are never stored; the workspace is bounded by a byte
   budget, never ``N x N`` unless that fits.
2. :func:`amf_dz_gemm_kernel` as dQ: rows of the chunk, reduction over all ``N`` keys.
3. :func:`amf_dz_gemm_kernel` as dK, key-stationary: each program owns a tile of keys and
   columns, reduces over the chunk's query rows in a fixed order in fp32 registers, and adds
   the result to an fp32 dK buffer it alone writes. Chunks run one after another, so every dK
   element is summed in the same order on every run: deterministic, no atomics, no races.

Each ``dz`` element written costs 4 bytes at most and feeds ``4*H*d`` FLOPs of the two GEMMs, so
the workspace traffic is negligible next to the arithmetic (intensity ~ ``H*d`` FLOP/byte).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._scores import score_tile

DZ_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=3),
]
DZ_KEY = ("HW", "HEADS", "HEAD_DIM")

GEMM_CONFIGS = [
    triton.Config({"BLOCK_R": 128, "BLOCK_C": 128, "BLOCK_K": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_R": 128, "BLOCK_C": 64, "BLOCK_K": 64}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_R": 64, "BLOCK_C": 128, "BLOCK_K": 64}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_R": 64, "BLOCK_C": 64, "BLOCK_K": 64}, num_warps=4, num_stages=3),
]
GEMM_KEY = ("R", "COLS", "KDIM", "ACCUMULATE")
# dK accumulates into its output: the autotuner's trial runs must not leave their sums behind.
GEMM_RESTORE = ("out_ptr",)

LOG2E = tl.constexpr(1.4426950408889634)


def amf_dz_kernel(
    q_ptr, k_ptr, lse_ptr, g_ptr, go_ptr, ws_ptr,
    sqh, sqt, sqd,  # q, k, lse [N, F], g [F, F, h*w, 2], <g, o> [N, F]: one batch element each
    skh, skt, skd,
    sgi, sgj, sgs, sgc,
    i0, text, F, HW, W, HEADS, N,
    qk_scale,  # tau / (H sqrt(d)) * log2(e)
    dz_scale,  # tau / (H sqrt(d)) * range scale: what the workspace holds per unit of dz
    HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    tiles_m = (HW + BLOCK_M - 1) // BLOCK_M
    tiles_n = (HW + BLOCK_N - 1) // BLOCK_N
    il = tl.program_id(0) // tiles_m  # query frame inside the chunk
    i = i0 + il
    j = tl.program_id(1) // tiles_n
    offs_m = (tl.program_id(0) % tiles_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = (tl.program_id(1) % tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < HW
    mask_n = offs_n < HW
    q_rows = q_ptr + (text + i * HW + offs_m)[:, None].to(tl.int64) * sqt
    k_cols = k_ptr + (text + j * HW + offs_n)[None, :].to(tl.int64) * skt

    acc = score_tile(q_rows, k_cols, mask_m, mask_n, sqh, sqd, skh, skd, HEADS,
                     HEAD_DIM, UPCAST, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)

    row = (i * HW + offs_m) * F + j  # [N, F] index of (m, j)
    lse2 = tl.load(lse_ptr + row, mask=mask_m, other=0.0) * LOG2E
    g_dot_o = tl.load(go_ptr + row, mask=mask_m, other=0.0)
    g_at = g_ptr + i * sgi + j * sgj + offs_m * sgs
    gx = tl.load(g_at, mask=mask_m, other=0.0).to(tl.float32)
    gy = tl.load(g_at + sgc, mask=mask_m, other=0.0).to(tl.float32)
    p = tl.exp2(acc * qk_scale - lse2[:, None])
    x_n = (offs_n % W).to(tl.float32)
    y_n = (offs_n // W).to(tl.float32)
    dz = p * (gx[:, None] * x_n[None, :] + gy[:, None] * y_n[None, :] - g_dot_o[:, None])
    ws = ws_ptr + (il * HW + offs_m)[:, None].to(tl.int64) * N + (j * HW + offs_n)[None, :]
    tl.store(ws, (dz * dz_scale).to(ws_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def amf_dz_gemm_kernel(
    a_ptr, x_ptr, out_ptr,
    sar, sak,  # workspace strides of (output row, reduction index): swapped for dK
    sxk, sxh, sxd,  # q or k of one batch element, already offset to the first reduction token
    sor,  # output row stride; the output is fp32 [R, H*d] with unit column stride
    R, COLS, KDIM,
    out_scale,  # undoes the workspace range scale
    HEAD_DIM: tl.constexpr, ACCUMULATE: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``out[r, c] (+)= out_scale * sum_k A[r, k] * X[k, c]``, ``X[k, h*d + e] = x[h, k, e]``."""
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_r = offs_r < R
    mask_c = offs_c < COLS
    col_off = (offs_c // HEAD_DIM) * sxh + (offs_c % HEAD_DIM) * sxd  # concatenated column -> (h, e)
    offs_k = tl.arange(0, BLOCK_K)
    a_rows = a_ptr + offs_r[:, None].to(tl.int64) * sar
    acc = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
    for k0 in range(0, KDIM, BLOCK_K):
        kk = k0 + offs_k
        mask_k = kk < KDIM
        at = tl.load(a_rows + kk[None, :].to(tl.int64) * sak, mask=mask_r[:, None] & mask_k[None, :], other=0.0)
        xt = tl.load(x_ptr + kk[:, None].to(tl.int64) * sxk + col_off[None, :],
                     mask=mask_k[:, None] & mask_c[None, :], other=0.0)
        if UPCAST:
            at = at.to(tl.float32)
            xt = xt.to(tl.float32)
        acc = tl.dot(at, xt, acc, input_precision=PRECISION)
    acc = acc * out_scale
    out = out_ptr + offs_r[:, None].to(tl.int64) * sor + offs_c[None, :]
    mask = mask_r[:, None] & mask_c[None, :]
    if ACCUMULATE:
        acc += tl.load(out, mask=mask, other=0.0)
    tl.store(out, acc, mask=mask)
