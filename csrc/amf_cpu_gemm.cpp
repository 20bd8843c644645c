#include "amf_cpu_gemm.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>

#include <cstdlib>
#include <string_view>

namespace at::native {
// ATen's oneDNN matmul, exported by libtorch_cpu but not among torch's installed headers. Weak: where a
// torch lacks it (or changed its signature, hence its symbol), this is null and gemm_out stays on ATen.
__attribute__((weak)) void mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result, float beta,
                                         float alpha);
}  // namespace at::native

namespace ditflow_fast {

bool cpu_is_intel() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool intel = __builtin_cpu_is("intel");
  return intel;
#else
  return false;
#endif
}

namespace {

// Whether this CPU has the units ATen's oneDNN matmul asks of an x86 CPU for float32 (it refuses otherwise) and,
// unless any vendor will do, is not Intel's (there MKL runs AVX-512 itself).
bool cpu_takes_onednn(bool any_vendor) {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool avx512 = __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                             __builtin_cpu_supports("avx512dq");
  return avx512 && (any_vendor || !cpu_is_intel());
#else
  return false;
#endif
}

// Layouts oneDNN's optimised matmul takes as they are: rows with unit stride (any pitch) for the output, and
// contiguous or transposed-contiguous operands (ATen copies others). A column-major output went to oneDNN's
// reference matmul instead, which took 197 s for a cpu-5b backward (docs/runs/onednn_gemm/).
bool rows_out(const at::Tensor& t) { return t.stride(1) == 1 && t.stride(0) >= t.size(1); }
bool plain(const at::Tensor& t) { return t.is_contiguous() || (t.stride(0) == 1 && t.stride(1) == t.size(0)); }
bool onednn_takes(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  return out.numel() > 0 && a.size(1) > 0 && rows_out(out) && plain(a) && plain(b);  // empty: ATen's rules
}

}  // namespace

bool onednn_gemm_enabled() {
  if (&at::native::mkldnn_matmul == nullptr || !at::globalContext().userEnabledMkldnn()) return false;
  const char* knob = std::getenv("DITFLOW_FAST_CPU_ONEDNN");
  const std::string_view v = knob ? knob : "";
  return v != "0" && cpu_takes_onednn(v == "1");
}

void gemm_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double beta, double alpha) {
  if (out.scalar_type() == at::kFloat && onednn_gemm_enabled()) {
    const float be = static_cast<float>(beta), al = static_cast<float>(alpha);
    if (onednn_takes(out, a, b)) {
      at::native::mkldnn_matmul(a, b, out, be, al);
      return;
    }
    if (onednn_takes(out.t(), b.t(), a.t())) {  // a column-major output: its transpose, out^T = b^T a^T
      at::native::mkldnn_matmul(b.t(), a.t(), out.t(), be, al);
      return;
    }
  }
  at::Tensor o = out;  // the out= functions take a non-const reference
  if (beta == 0.0 && alpha == 1.0)
    at::mm_out(o, a, b);
  else
    at::addmm_out(o, out, a, b, beta, alpha);
}

}  // namespace ditflow_fast
