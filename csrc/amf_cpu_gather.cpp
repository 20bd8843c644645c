// Heads concatenation fused with the value check: see amf_cpu_gather.h.
#include "amf_cpu_gather.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "amf_cpu_scratch.h"
#include "amf_cpu_tiling.h"
#include "amf_reduce.h"

namespace ditflow_fast {
namespace {

// max|x| over n contiguous elements into m, and the sum of x - x into z, which is 0 for finite x and NaN once
// any x is NaN or inf: branch-free, so the loop vectorises. Called on long runs: a simd reduction ends in a
// horizontal one, which per 64-element head row made the pass three times slower than ATen's two.
template <typename T>
AMF_INLINE void scan(const T* x, int64_t n, T& m, T& z) {
  T hm = m, hz = z;
  AMF_SIMD_MAX_SUM(hm, hz)
  for (int64_t i = 0; i < n; ++i) {
    hm = std::max(hm, std::abs(x[i]));
    hz += x[i] - x[i];
  }
  m = hm;
  z = hz;
}

// Rows [begin, end) of (batch element, token), kRows at a time head by head: each head's rows are read in
// order and the block's output rows stay in L2 while the heads fill them (token by token, the 48 heads of
// cpu-5b were 48 read streams). The copied block is then scanned in one run, and so is each head's run of
// text rows where they are contiguous.
constexpr int64_t kRows = 32;

template <typename T>
AMF_INLINE double gather_rows_impl(const at::Tensor& t, int64_t text, T* out, int64_t begin, int64_t end) {
  const int64_t heads = t.size(1), tokens = t.size(2), d = t.size(3);
  const int64_t sb = t.stride(0), sh = t.stride(1), st = t.stride(2), sd = t.stride(3);
  const bool rows_contiguous = sd == 1 && st == d;
  const T* base = t.const_data_ptr<T>();
  T m = 0, z = 0;
  for (int64_t r0 = begin; r0 < end;) {
    const int64_t b = r0 / tokens, t0 = r0 % tokens, t1 = std::min(tokens, t0 + std::min(kRows, end - r0));
    const int64_t v0 = std::max(t0, text);  // the block's first video token
    for (int64_t h = 0; h < heads; ++h) {
      const T* src = base + b * sb + h * sh;
      if (rows_contiguous && t0 < v0) scan(src + t0 * st, (v0 - t0) * d, m, z);
      for (int64_t tok = t0; tok < t1; ++tok) {
        if (tok < v0) {
          if (!rows_contiguous)
            for (int64_t i = 0; i < d; ++i) scan(src + tok * st + i * sd, 1, m, z);
          continue;
        }
        T* dst = out + ((b * (tokens - text) + tok - text) * heads + h) * d;
        for (int64_t i = 0; i < d; ++i) dst[i] = src[tok * st + i * sd];
      }
    }
    if (v0 < t1) scan(out + (b * (tokens - text) + v0 - text) * heads * d, (t1 - v0) * heads * d, m, z);
    r0 += t1 - t0;
  }
  return std::isnan(z) ? std::numeric_limits<double>::quiet_NaN() : static_cast<double>(m);
}

AMF_TARGET_CLONES double gather_rows(const at::Tensor& t, int64_t text, float* out, int64_t begin, int64_t end) {
  return gather_rows_impl(t, text, out, begin, end);
}
double gather_rows(const at::Tensor& t, int64_t text, double* out, int64_t begin, int64_t end) {
  return gather_rows_impl(t, text, out, begin, end);
}

}  // namespace

std::tuple<at::Tensor, double> gather_checked(const at::Tensor& t, int64_t text_tokens, int64_t slot) {
  TORCH_CHECK(t.dim() == 4 && t.device().is_cpu(), "ditflow_fast gather_checked: t must be a CPU [B, H, T, d] tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "ditflow_fast gather_checked: t must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK(0 <= text_tokens && text_tokens <= t.size(2), "ditflow_fast gather_checked: text_tokens must be in [0, ",
              t.size(2), "], got ", text_tokens);
  const int64_t batch = t.size(0), tokens = t.size(2);
  at::Tensor out = scratch(static_cast<Slot>(slot), {batch, tokens - text_tokens, t.size(1) * t.size(3)},
                           t.scalar_type());
  const auto combine = [](double a, double b) {
    return std::isnan(a) || std::isnan(b) ? std::numeric_limits<double>::quiet_NaN() : std::max(a, b);
  };
  double maxabs = 0.0;
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "gather_checked", [&] {
    scalar_t* dst = out.data_ptr<scalar_t>();
    maxabs = at::parallel_reduce(0, batch * tokens, kRows, 0.0, [&](int64_t begin, int64_t end, double) {
      return gather_rows(t, text_tokens, dst, begin, end);
    }, combine);
  });
  return {out, maxabs};
}

}  // namespace ditflow_fast
