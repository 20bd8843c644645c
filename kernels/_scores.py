"""The one definition of a logits tile, shared by the forward and the backward's logit-gradient kernel.

The backward recomputes the forward's probabilities from the stored log-sum-exp, so its logits
must be the forward's bit for bit: the same loads, the same fp32 accumulation order, the same
``tl.dot`` precision. Both kernels therefore call :func:`score_tile` rather than each holding a
copy of the loop. It is a device function: :mod:`._jit` wraps it alongside whichever kernel
calls it, for the same mode (interpreted or compiled), and the compiler inlines it.
"""

from __future__ import annotations

import triton.language as tl

from ._jit import helper


@helper
def score_tile(
    q_rows, k_cols, mask_m, mask_n,
    sqh, sqd, skh, skd, HEADS,
    HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``S[m, n] = sum_h <q[h, m], k[h, n]>``, fp32 ``[BLOCK_M, BLOCK_N]``, before any scale.

    ``q_rows`` ``[BLOCK_M, 1]`` and ``k_cols`` ``[1, BLOCK_N]`` point at element 0 of head 0 of
    each query and key token; rows and columns outside ``mask_m`` / ``mask_n`` read zeros.
    """
    offs_k = tl.arange(0, BLOCK_K)
    K_STEPS: tl.constexpr = (HEAD_DIM + BLOCK_K - 1) // BLOCK_K
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    # One flat loop over (head, slice of d): the software pipeliner overlaps the loads of the next
    # step with the current dot only in the innermost loop, which a per-head loop of one step
    # (d = BLOCK_K = 64) would leave without any overlap.
    for step in range(0, HEADS * K_STEPS):
        h = step // K_STEPS
        e = (step % K_STEPS) * BLOCK_K + offs_k
        mask_e = e < HEAD_DIM
        qt = tl.load(q_rows + h * sqh + e[None, :] * sqd, mask=mask_m[:, None] & mask_e[None, :], other=0.0)
        kt = tl.load(k_cols + h * skh + e[:, None] * skd, mask=mask_e[:, None] & mask_n[None, :], other=0.0)
        if UPCAST:  # the interpreter computes bf16 on raw bits: do the arithmetic in fp32
            qt = qt.to(tl.float32)
            kt = kt.to(tl.float32)
        acc = tl.dot(qt, kt, acc, input_precision=PRECISION)
    return acc
