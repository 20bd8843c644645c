"""Fused AMF forward: scores, per-target-frame reduction and displacement in one kernel.

One program owns ``BLOCK_M`` query patches of frame ``i`` against every key of frame ``j`` of
batch element ``b`` (grid ``(cdiv(h*w, BLOCK_M), F*F, B)``). For each tile of ``BLOCK_N`` keys it
forms the ``BLOCK_M x BLOCK_N`` logits with a K-loop over the heads-concatenated inner dimension
``H*d`` (head by head, ``BLOCK_K`` at a time; ``_scores.score_tile``, which the backward shares),
accumulating in fp32 registers, then folds the tile into a running reduction and drops it:

* soft: online soft-argmax in the base-2 domain (running maximum ``m``, normaliser ``l`` and the
  probability-weighted sums of the key coordinates, rescaled by ``2^(m_old - m_new)`` whenever
  the maximum grows, as flash attention rescales its output);
* argmax: running maximum and its index; inside a tile the lowest index among equal maxima,
  across tiles a later tile replaces the best only when strictly greater, so the lowest key
  index wins ties overall, as ``torch.argmax`` does.

q and k are read in place through their ``[B, H, T, d]`` strides: the concatenated column
``c = h*d + e`` of video token ``n`` is ``q[b, h, text + n, e]``, and the text prefix is skipped
by an offset. Nothing of size ``N x N`` and no per-frame score block reaches memory; the outputs
are the displacements ``[B, F, F, h*w, 2]`` and, in soft mode, the natural-log log-sum-exp
``[B, N, F]`` of the logits ``z = tau * S`` that the backward recomputes probabilities from.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._scores import score_tile

# Tiles for A100 / H100 / RTX 4090-class GPUs. The inner dimension is H*d (3072 for
# CogVideoX-5B), so the kernel is a long-K GEMM with a light epilogue: 128x64 and 128x128 tiles
# with 3-4 stages suit the 164-228 KB of shared memory of A100/H100, 64x64 with 3 stages keeps
# the 100 KB of an RTX 4090 SM occupied by two programs. The autotuner picks per shape.
FWD_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=5),
    # fp32 inputs (FMA dot, 4-byte tiles): the larger tiles spill; this one does not
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=3),
]
FWD_KEY = ("HW", "HEADS", "HEAD_DIM", "SOFT")

# Kernels may read module globals only as constexpr.
LN2 = tl.constexpr(0.6931471805599453)


def amf_fwd_kernel(
    q_ptr, k_ptr, out_ptr, lse_ptr,
    sqb, sqh, sqt, sqd,
    skb, skh, skt, skd,
    text, F, HW, W, HEADS,
    qk_scale,  # tau / (H sqrt(d)) * log2(e): logits straight into the base-2 domain
    HEAD_DIM: tl.constexpr, SOFT: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_ij = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    i = pid_ij // F
    j = pid_ij % F

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # patch index s inside frame i
    mask_m = offs_m < HW
    q_rows = q_ptr + b * sqb + (text + i * HW + offs_m)[:, None].to(tl.int64) * sqt
    k_base = k_ptr + b * skb

    if SOFT:
        run_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
        run_sum = tl.zeros([BLOCK_M], tl.float32)
        run_x = tl.zeros([BLOCK_M], tl.float32)
        run_y = tl.zeros([BLOCK_M], tl.float32)
    else:
        best = tl.full([BLOCK_M], float("-inf"), tl.float32)
        best_idx = tl.zeros([BLOCK_M], tl.int32)

    for n0 in range(0, HW, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < HW
        k_cols = k_base + (text + j * HW + offs_n)[None, :].to(tl.int64) * skt
        acc = score_tile(q_rows, k_cols, mask_m, mask_n, sqh, sqd, skh, skd, HEADS,
                         HEAD_DIM, UPCAST, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
        x_n = (offs_n % W).to(tl.float32)
        y_n = (offs_n // W).to(tl.float32)
        if SOFT:
            z = tl.where(mask_n[None, :], acc * qk_scale, float("-inf"))
            new_max = tl.maximum(run_max, tl.max(z, axis=1))
            rescale = tl.exp2(run_max - new_max)  # 0 on the first tile (exp2(-inf))
            p = tl.exp2(z - new_max[:, None])
            run_sum = run_sum * rescale + tl.sum(p, axis=1)
            run_x = run_x * rescale + tl.sum(p * x_n[None, :], axis=1)
            run_y = run_y * rescale + tl.sum(p * y_n[None, :], axis=1)
            run_max = new_max
        else:
            s = tl.where(mask_n[None, :], acc, float("-inf"))  # the positive scale cannot move the argmax
            tile_max = tl.max(s, axis=1)
            tile_idx = tl.min(tl.where(s == tile_max[:, None], offs_n[None, :], HW), axis=1)
            take = tile_max > best  # strict: an equal maximum in a later tile has a higher index
            best = tl.where(take, tile_max, best)
            best_idx = tl.where(take, tile_idx, best_idx)

    x_m = (offs_m % W).to(tl.float32)
    y_m = (offs_m // W).to(tl.float32)
    if SOFT:
        dx = run_x / run_sum - x_m
        dy = run_y / run_sum - y_m
        lse = (run_max + tl.log2(run_sum)) * LN2
        tl.store(lse_ptr + (b * F * HW + i * HW + offs_m) * F + j, lse, mask=mask_m)
    else:
        dx = (best_idx % W).to(tl.float32) - x_m
        dy = (best_idx // W).to(tl.float32) - y_m
    out = out_ptr + ((b * F + i) * F + j) * HW * 2 + offs_m * 2
    tl.store(out, dx, mask=mask_m)
    tl.store(out + 1, dy, mask=mask_m)
