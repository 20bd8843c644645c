// Argmax forward of float32 or bf16 inputs by a bf16 screen with exact rescoring (amf_cpu_screen.cpp).
//
// The scores of a tile are first computed from bf16 copies of q and k, where this CPU multiplies
// bf16 about twice as fast as float32 (AVX512-BF16 / AMX). A rigorous bound E on |s - s~| per query
// and key frame (rounding of the inputs, fp32 accumulation, bf16 rounding of the result) keeps as
// candidates only the keys with s~ >= max s~ - 2E; the true argmax and every key tied with it are
// among them. The candidates are rescored in float64 from the inputs, and the first
// maximum wins, so the result is the argmax of the exact scores (the spec's tie rule included),
// not an approximation. A tile whose candidates are too many (near-ties, overflow) is redone with
// the float32 GEMM, so adversarial inputs cost at most one more GEMM of that tile. bf16 inputs skip the
// rounding (their bound has no input term) and go straight to the bf16 GEMM.
#pragma once

#include <ATen/core/Tensor.h>

namespace ditflow_fast {

// Whether the screen is used: the CPU multiplies bf16 natively and DITFLOW_FAST_CPU_SCREEN is not "0".
bool argmax_screen_enabled();

// qc, kc: contiguous [B, N, D], both float32 or both bf16 (then the inputs are their own bf16 copies, with no
// rounding error, and the candidates are rescored from them); px, py: the hw patch coordinates; target:
// [B, N, F, 2] out.
void argmax_forward_screened(const at::Tensor& qc, const at::Tensor& kc, int64_t frames, int64_t hw,
                             const float* px, const float* py, float* target);

}  // namespace ditflow_fast
