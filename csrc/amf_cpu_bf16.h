// Score tiles of bf16 inputs in float32 by AVX512-BF16 dot products (amf_cpu_bf16.cpp).
//
// ATen offers no bf16 x bf16 -> float32 GEMM on a CPU without AMX: at::mm rounds its output to bf16
// and MKL's gemm_bf16bf16f32 runs at the float32 rate on this project's AMD CI machine. A product of
// two bf16 values is exact in float32, so these tiles have the float32 GEMM's accuracy (float32
// accumulation; VDPBF16PS flushes subnormal inputs and results to zero) at about twice its speed:
// single-threaded 150 to 180 GFLOP/s against 95 to 98 for MKL's float32 tiles at D = 3,072 (Zen 4).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace ditflow_fast {

// The CPU has AVX512-BF16 (checked once) and DITFLOW_FAST_CPU_BF16 is not "0".
bool bf16_gemm_enabled();

// Keys [batch, n, d] packed for bf16_scores: per (batch, key frame), ceil(hw / 32) panels of 32 keys,
// each as (d + 1) / 2 rows of 32 bf16 pairs (zero padded), so that a tile may start at any frame.
struct PackedKeys {
  at::Tensor data;  // int32 scratch (amf_cpu_scratch.h), every element written by pack_keys: no zero fill first
  int64_t frames = 0, hw = 0, pairs = 0, panels = 0;  // panels per frame
  const uint32_t* frame(int64_t b, int64_t j) const {
    return reinterpret_cast<const uint32_t*>(data.const_data_ptr<int32_t>()) + (b * frames + j) * panels * pairs * 32;
  }
};

PackedKeys pack_keys(const c10::BFloat16* k, int64_t batch, int64_t n, int64_t d, int64_t hw);

// s[r, f * hw + c] = <q[r], key c of frame j0 + f> in float32, for r < rows, f < g (row pitch lds).
// q: rows x d, row pitch d. scratch: the caller's per-thread buffer for the packed query rows.
void bf16_scores(const c10::BFloat16* q, int64_t rows, int64_t d, const PackedKeys& keys, int64_t b, int64_t j0,
                 int64_t g, float* s, int64_t lds, std::vector<uint32_t>& scratch);

// The same for rows [0, rows) of q against every key of batch element b (row pitch of s: all keys),
// split over the threads.
void bf16_score_rows(const c10::BFloat16* q, int64_t rows, int64_t d, const PackedKeys& keys, int64_t b, float* s);

// The bf16 soft backward's keys for dQ (amf_cpu.cpp, backward_bf16):
// kc [batch, n, d] with each frame's mean key subtracted (taken in float32, then rounded to bf16), in
// scratch slot kKCentred.
at::Tensor centre_keys(const at::Tensor& kc, int64_t hw);

// The bf16 bits of v rounded to nearest even (NaN stays NaN); branch-free, so loops of it vectorise.
inline uint16_t float_to_bf16_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>(v != v ? 0x7FC0u : rounded);
}

}  // namespace ditflow_fast
