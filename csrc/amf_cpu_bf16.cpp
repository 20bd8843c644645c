// bf16 x bf16 -> float32 score tiles by VDPBF16PS (see amf_cpu_bf16.h).
//
// The classic blocking: the query rows of a tile are packed in panels of kMR rows, the keys in panels
// of 32 (amf_cpu_bf16.h), both as bf16 pairs, so that one VDPBF16PS multiplies a broadcast pair of a
// query row with the same pair of 32 keys (two registers) and adds both products to float32
// accumulators. A kMR x 32 block of the tile stays in 24 of the 32 registers over kKC pairs; a key
// panel slice (kKC x 32 pairs, 32 KiB) is reused by every row panel while in L1. Tuned on the Zen 4
// CI machine, one thread, 192 x 1,320 x 3,072 tiles: kMR 12 (14, 8 and 6 within 5%), kKC 256 with
// 256-key chunks 158 GFLOP/s (128 / 128: 154; 64: 141); 660-row tiles 182 GFLOP/s.
#include "amf_cpu_bf16.h"

#include "amf_cpu_scratch.h"
#include "amf_cpu_tiling.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#if defined(__GNUC__) && defined(__x86_64__) && (defined(__clang__) || __GNUC__ >= 10)
#define AMF_HAVE_BF16_KERNEL 1
#include <immintrin.h>
#endif

namespace ditflow_fast {
namespace {

constexpr int kMR = 12, kNR = 32;
constexpr int64_t kKC = 256, kChunkPanels = 8;

// Rows [0, rows) of x (row pitch ld, d bf16 values) as panels of `width` rows: [panel][pair][width].
void pack_pairs(const c10::BFloat16* x, int64_t ld, int64_t rows, int64_t d, int64_t width, uint32_t* out) {
  const int64_t pairs = (d + 1) / 2, panels = (rows + width - 1) / width;
  for (int64_t r = rows; r < panels * width; ++r)  // the last panel's padding rows multiply as zeros
    for (int64_t p = 0; p < pairs; ++p) out[(r / width) * pairs * width + p * width + r % width] = 0u;
  for (int64_t r = 0; r < rows; ++r) {
    uint32_t* dst = out + (r / width) * pairs * width + r % width;
    const c10::BFloat16* src = x + r * ld;
    for (int64_t p = 0; p < d / 2; ++p) {
      uint32_t v;
      std::memcpy(&v, src + 2 * p, 4);  // little-endian: element 2p in the low half, as VDPBF16PS pairs them
      dst[p * width] = v;
    }
    if (d % 2) dst[(pairs - 1) * width] = src[d - 1].x;  // the odd value's pair partner is zero
  }
}

#ifdef AMF_HAVE_BF16_KERNEL
// c[i, :cols] (+)= sum over kc pairs of a[p][i] . b[p][:] for i < rows; m0, m1 mask the 32 columns.
// The block is summed apart from c, so the float32 rounding grows with kc, not with all of d.
__attribute__((target("avx512f,avx512bf16"))) void micro(int64_t kc, const uint32_t* a, const uint32_t* b, float* c,
                                                          int64_t ldc, bool first, int rows, __mmask16 m0,
                                                          __mmask16 m1) {
  __m512 acc[kMR][2];
#pragma GCC unroll 12
  for (int i = 0; i < kMR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kc; ++p) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + p * kNR);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + p * kNR + 16);
#pragma GCC unroll 12
    for (int i = 0; i < kMR; ++i) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[p * kMR + i]));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], av, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], av, b1);
    }
  }
#pragma GCC unroll 12
  for (int i = 0; i < kMR; ++i) {
    if (i < rows) {
      float* ci = c + i * ldc;
      _mm512_mask_storeu_ps(ci, m0, first ? acc[i][0] : _mm512_add_ps(acc[i][0], _mm512_maskz_loadu_ps(m0, ci)));
      _mm512_mask_storeu_ps(ci + 16, m1, first ? acc[i][1] : _mm512_add_ps(acc[i][1], _mm512_maskz_loadu_ps(m1, ci + 16)));
    }
  }
}

__mmask16 low_mask(int64_t n) { return n >= 16 ? 0xFFFF : n <= 0 ? 0 : static_cast<__mmask16>((1u << n) - 1); }
#endif

}  // namespace

bool bf16_gemm_enabled() {
#ifdef AMF_HAVE_BF16_KERNEL
  static const bool cpu = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
  const char* v = std::getenv("DITFLOW_FAST_CPU_BF16");
  return cpu && !(v && std::strcmp(v, "0") == 0);
#else
  return false;
#endif
}

PackedKeys pack_keys(const c10::BFloat16* k, int64_t batch, int64_t n, int64_t d, int64_t hw) {
  PackedKeys pk;
  pk.frames = n / hw;
  pk.hw = hw;
  pk.pairs = (d + 1) / 2;
  pk.panels = (hw + kNR - 1) / kNR;
  pk.data = scratch(Slot::kPackedKeys, {batch * pk.frames * pk.panels * pk.pairs * kNR}, at::kInt);
  auto* out = reinterpret_cast<uint32_t*>(pk.data.mutable_data_ptr<int32_t>());
  at::parallel_for(0, batch * pk.frames, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bj = begin; bj < end; ++bj)
      pack_pairs(k + bj * hw * d, d, hw, d, kNR, out + bj * pk.panels * pk.pairs * kNR);
  });
  return pk;
}

void bf16_scores(const c10::BFloat16* q, int64_t rows, int64_t d, const PackedKeys& keys, int64_t b, int64_t j0,
                 int64_t g, float* s, int64_t lds, std::vector<uint32_t>& scratch) {
#ifdef AMF_HAVE_BF16_KERNEL
  const int64_t pairs = keys.pairs, hw = keys.hw, row_panels = (rows + kMR - 1) / kMR;
  scratch.resize(row_panels * pairs * kMR);
  pack_pairs(q, d, rows, d, kMR, scratch.data());
  for (int64_t f = 0; f < g; ++f) {
    const uint32_t* frame = keys.frame(b, j0 + f);
    for (int64_t jc = 0; jc < keys.panels; jc += kChunkPanels)
      for (int64_t k0 = 0; k0 < pairs; k0 += kKC) {
        const int64_t kc = std::min(kKC, pairs - k0);
        for (int64_t jp = jc; jp < std::min(keys.panels, jc + kChunkPanels); ++jp) {
          const int64_t cols = std::min<int64_t>(kNR, hw - jp * kNR);
          const uint32_t* bp = frame + (jp * pairs + k0) * kNR;
          float* c = s + f * hw + jp * kNR;
          for (int64_t ip = 0; ip < row_panels; ++ip)
            micro(kc, scratch.data() + (ip * pairs + k0) * kMR, bp, c + ip * kMR * lds, lds, k0 == 0,
                  static_cast<int>(std::min<int64_t>(kMR, rows - ip * kMR)), low_mask(cols), low_mask(cols - 16));
        }
      }
  }
#else
  TORCH_CHECK(false, "ditflow_fast: the bf16 score kernel is not built for this CPU");
#endif
}

void bf16_score_rows(const c10::BFloat16* q, int64_t rows, int64_t d, const PackedKeys& keys, int64_t b, float* s) {
  const int64_t n = keys.frames * keys.hw, threads = std::max<int64_t>(1, at::get_num_threads());
  // one tall block per thread, in whole kMR panels: the forward's tiles ran best at 660 rows
  const int64_t block = ceil_div(ceil_div(rows, threads), kMR) * kMR;
  at::parallel_for(0, ceil_div(rows, block), 1, [&](int64_t first, int64_t last) {
    std::vector<uint32_t> packed;
    for (int64_t i = first; i < last; ++i) {
      const int64_t r0 = i * block;
      bf16_scores(q + r0 * d, std::min(block, rows - r0), d, keys, b, 0, keys.frames, s + r0 * n, n, packed);
    }
  });
}

at::Tensor centre_keys(const at::Tensor& kc, int64_t hw) {
  const int64_t batch = kc.size(0), n = kc.size(1), d = kc.size(2), frames = n / hw;
  at::Tensor out = scratch(Slot::kKCentred, kc.sizes(), at::kBFloat16);
  const c10::BFloat16* k = kc.const_data_ptr<c10::BFloat16>();
  c10::BFloat16* o = out.mutable_data_ptr<c10::BFloat16>();
  at::parallel_for(0, batch * frames, 1, [&](int64_t first, int64_t last) {
    std::vector<float> mean(d);
    for (int64_t bj = first; bj < last; ++bj) {
      const int64_t base = bj * hw * d;
      std::fill(mean.begin(), mean.end(), 0.0f);
      for (int64_t c = 0; c < hw; ++c)
        for (int64_t i = 0; i < d; ++i) mean[i] += static_cast<float>(k[base + c * d + i]);
      for (int64_t i = 0; i < d; ++i) mean[i] /= static_cast<float>(hw);
      for (int64_t c = 0; c < hw; ++c)
        for (int64_t i = 0; i < d; ++i)
          o[base + c * d + i] = c10::BFloat16(static_cast<float>(k[base + c * d + i]) - mean[i]);
    }
  });
  return out;
}

}  // namespace ditflow_fast
