// Fused CPU kernels of the Attention Motion Flow (declarations; definitions in amf_cpu.cpp).
//
// Inputs are the heads-concatenated video tokens qc, kc: [B, N, D] contiguous, float32, float64 or bf16,
// N = frames * height * width, D = heads * head_dim. Key n of frame j sits at (n % width, n / width).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace ditflow_fast {

// Forward. soft: target[b, m, j] = sum_n softmax_n(alpha * <qc[m], kc[n]>) * pos(n) over the keys of
// frame j, and lse[b, m, j] = log sum_n exp(alpha * <qc[m], kc[n]>). argmax: target = pos of the
// first maximum of <qc[m], kc[n]> over frame j (alpha is not used), lse is empty.
// Returns (target [B, N, F, 2], lse [B, N, F] or [0]) in the input dtype (float32 for bf16 inputs).
std::tuple<at::Tensor, at::Tensor> amf_forward_cpu(const at::Tensor& qc, const at::Tensor& kc, int64_t frames,
                                                   int64_t height, int64_t width, double alpha, bool soft);

// The soft forward that also returns the raw scores <qc[m], kc[n]> as [B, N, N] (written by the
// forward's own GEMM tiles), so that the backward need not recompute them: one GEMM less for
// B * N^2 more memory; the Python side calls it only under a memory budget.
std::tuple<at::Tensor, at::Tensor, at::Tensor> amf_forward_scores_cpu(const at::Tensor& qc, const at::Tensor& kc,
                                                                      int64_t frames, int64_t height, int64_t width,
                                                                      double alpha);

// Soft backward from the forward's target and lse and the upstream gradient grad [B, N, F, 2] of the
// target: dz = p * (<g, pos(n)> - <g, o>), dqc = alpha * dz @ kc, dkc = alpha * dz^T @ qc, by row chunks
// of at most 64 MiB of scores, with p recomputed from lse. A gradient that is not needed comes back as an
// empty tensor. scores: the forward's [B, N, N] from amf_forward_scores_cpu, or none (then each chunk's
// scores are recomputed). bf16 qc, kc (target, lse, grad and scores float32): where the
// CPU multiplies bf16 the two gradient GEMMs run in bf16 and dqc, dkc come back in bf16; else in float32
// on float32 copies.
std::tuple<at::Tensor, at::Tensor> amf_backward_cpu(const at::Tensor& qc, const at::Tensor& kc,
                                                    const at::Tensor& target, const at::Tensor& lse,
                                                    const at::Tensor& grad, int64_t frames, int64_t height,
                                                    int64_t width, double alpha, bool need_dq, bool need_dk,
                                                    const std::optional<at::Tensor>& scores, bool transposed);

}  // namespace ditflow_fast
