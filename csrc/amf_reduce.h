// Reduction steps of the Attention Motion Flow, shared by the CPU kernel and the CUDA kernel.
//
// Everything here is plain arithmetic on scalars, compiled for the host by any C++17 compiler and
// for the device by nvcc (AMF_HD expands to __host__ __device__ there). The CPU tests therefore check
// the exact steps the CUDA epilogue runs. Contract: docs/amf.md.
//
// For one query m and one target frame j the kernels see the keys n of frame j as a stream of
// (logit, key index, coordinate) triples, possibly split over several threads or tiles:
//   * argmax:  ArgmaxState, updated by argmax_step and combined by argmax_merge. On exact ties the
//              lowest key index wins, whatever order the partial states are merged in (the rule
//              torch.argmax documents, which the reference follows).
//   * soft:    SoftState, the online soft-argmax: running max m, normaliser l = sum exp(z - m) and the
//              coordinate sums sx, sy = sum exp(z - m) * pos. soft_finish turns it into the expected
//              position o = (sx, sy) / l and the log-sum-exp m + log l that the backward keeps.
//   * backward: soft_logit_grad, dz = p * (<g, pos(n)> - <g, o>) with p = exp(z - lse) recomputed.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

// Always inlined on the host too: the CPU kernel's target_clones compile these only where they are
// inlined (amf_cpu_tiling.h, AMF_INLINE); an out-of-line copy would run at the baseline ISA.
#if defined(__CUDACC__)
#define AMF_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define AMF_HD __attribute__((always_inline)) inline
#else
#define AMF_HD inline
#endif

// Host loops over a block carry an OpenMP simd hint (the max and the sums are reductions the
// compiler will not reorder on its own); device code and builds without OpenMP see nothing.
#if defined(_OPENMP) && !defined(__CUDA_ARCH__)
#define AMF_PRAGMA(text) _Pragma(#text)
#define AMF_SIMD_MAX(...) AMF_PRAGMA(omp simd reduction(max : __VA_ARGS__))
#define AMF_SIMD_SUM(...) AMF_PRAGMA(omp simd reduction(+ : __VA_ARGS__))
#define AMF_SIMD_MAX_SUM(m, s) AMF_PRAGMA(omp simd reduction(max : m) reduction(+ : s))
#define AMF_SIMD AMF_PRAGMA(omp simd)
#else
#define AMF_SIMD_MAX(...)
#define AMF_SIMD_SUM(...)
#define AMF_SIMD_MAX_SUM(m, s)
#define AMF_SIMD
#endif

namespace ditflow_fast {

#if !defined(__CUDA_ARCH__)
// exp of a finite float on the host, written without branches so that the loops calling it
// vectorise (glibc's expf does not, short of -ffast-math; the soft reduction and the backward take
// one exp per score). Cody-Waite reduction by ln 2 and Cephes' degree-6 polynomial: within 1.4 ulp
// of exp over [-87, 88] (checked by csrc/tests/test_reduce.cpp); below that it flushes to 0 where
// expf would give a denormal, and above 88.7 it gives inf. The clamp of r only matters for |x| so
// large that n * ln2 loses all precision, where the result is 0 or inf anyway. Needs
// -fno-trapping-math for GCC to if-convert the selects (the build flags set it).
inline float amf_exp_poly(float x) {
  const float shifter = 12582912.0f;  // 1.5 * 2^23: (t + shifter) - shifter rounds t to an integer
  float n = (x * 1.44269504088896341f + shifter) - shifter;
  float r = x - n * 0.693359375f;  // exact: 0.693359375 has 10 significant bits
  r = r - n * -2.12194440e-4f;
  r = r < -0.5f ? -0.5f : r;
  r = r > 0.5f ? 0.5f : r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  n = n < -127.0f ? -127.0f : n;  // 2^-127 -> bits 0 -> 0.0f
  n = n > 128.0f ? 128.0f : n;    // 2^128 -> bits of inf
  const int32_t bits = (static_cast<int32_t>(n) + 127) * (1 << 23);
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}
#endif

// min(t, 0) for t = z - lse, which is <= 0 in exact arithmetic. Where the compiler fuses the product
// z = alpha * s into the subtraction (an FMA: the AVX2 and AVX-512 clones, CUDA), the max key keeps the
// rounding residual of its logit, of either sign, and at logits near 1e33 that residual is itself near
// 1e26: exp of it was inf, and the gradient NaN. There p is 0 or 1 either way, and its dz is 0.
template <typename T>
AMF_HD T nonpositive(T t) {
  return t < T(0) ? t : T(0);
}

// Math wrappers: one spelling for host and device, overloaded on float and double so the same
// templates serve the fp32 (and fp32-accumulated bf16/fp16) and fp64 paths.
// amf_exp takes any argument, -inf included (the first key of an online state rescales from -inf).
AMF_HD float amf_exp(float x) {
#if defined(__CUDA_ARCH__)
  return __expf(x);  // fast intrinsic; the argument is always <= 0, where its error is ~2 ulp
#else
  return std::exp(x);
#endif
}
AMF_HD double amf_exp(double x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return std::exp(x);
#endif
}
// amf_exp_finite: finite arguments only; the vectorisable form on the host (hot loops).
AMF_HD float amf_exp_finite(float x) {
#if defined(__CUDA_ARCH__)
  return __expf(x);
#else
  return amf_exp_poly(x);
#endif
}
AMF_HD double amf_exp_finite(double x) { return amf_exp(x); }
AMF_HD float amf_log(float x) {
#if defined(__CUDA_ARCH__)
  return ::logf(x);
#else
  return std::log(x);
#endif
}
AMF_HD double amf_log(double x) {
#if defined(__CUDA_ARCH__)
  return ::log(x);
#else
  return std::log(x);
#endif
}

// -infinity without <limits>, whose members are host-only functions under plain nvcc.
template <typename T>
AMF_HD T amf_neg_inf() {
  return -static_cast<T>(HUGE_VAL);
}

// ---------------------------------------------------------------------------------------------
// argmax with the lowest-index rule
// ---------------------------------------------------------------------------------------------
template <typename T>
struct ArgmaxState {
  T best;     // largest score seen
  int index;  // key index of it (-1 before any key)
};

template <typename T>
AMF_HD ArgmaxState<T> argmax_init() {
  return ArgmaxState<T>{amf_neg_inf<T>(), -1};
}

// Keys may arrive in any order: a larger score wins, and an equal score wins only with a lower index.
template <typename T>
AMF_HD void argmax_step(ArgmaxState<T>& s, T score, int index) {
  if (score > s.best || (score == s.best && (s.index < 0 || index < s.index))) {
    s.best = score;
    s.index = index;
  }
}

// Combines two partial states (two threads, two tiles). Commutative and associative.
template <typename T>
AMF_HD void argmax_merge(ArgmaxState<T>& s, const ArgmaxState<T>& other) {
  if (other.index >= 0) argmax_step(s, other.best, other.index);
}

// A block of n scores for keys base, base + 1, ...: the block max first (a branch-free reduction),
// then the first key that attains it, folded into the state by the same rule as argmax_step.
template <typename T>
AMF_HD void argmax_block(ArgmaxState<T>& s, const T* score, int base, int n) {
  if (n <= 0) return;
  T bm = score[0];
  AMF_SIMD_MAX(bm)
  for (int i = 0; i < n; ++i) bm = score[i] > bm ? score[i] : bm;
  int first = 0;
  while (score[first] != bm) ++first;
  argmax_step(s, bm, base + first);
}

// ---------------------------------------------------------------------------------------------
// online soft-argmax with log-sum-exp
// ---------------------------------------------------------------------------------------------
template <typename T>
struct SoftState {
  T m;   // running max of the logits (-inf before any key)
  T l;   // sum of exp(z - m)
  T sx;  // sum of exp(z - m) * x
  T sy;  // sum of exp(z - m) * y
};

template <typename T>
AMF_HD SoftState<T> soft_init() {
  return SoftState<T>{amf_neg_inf<T>(), T(0), T(0), T(0)};
}

// One key with logit z at position (x, y). Exactly one exp per key: exp(z - m) when z does not raise
// the max, otherwise exp(m_old - z) to rescale what was accumulated.
template <typename T>
AMF_HD void soft_step(SoftState<T>& s, T z, T x, T y) {
  if (z <= s.m) {
    const T e = amf_exp(z - s.m);
    s.l += e;
    s.sx += e * x;
    s.sy += e * y;
  } else {
    const T r = amf_exp(s.m - z);  // 0 on the first key (m = -inf)
    s.l = s.l * r + T(1);
    s.sx = s.sx * r + x;
    s.sy = s.sy * r + y;
    s.m = z;
  }
}

// Moves the state to a new reference max m_new >= s.m (the block form below, and merges).
template <typename T>
AMF_HD void soft_rescale(SoftState<T>& s, T m_new) {
  if (m_new > s.m) {
    const T r = amf_exp(s.m - m_new);
    s.l *= r;
    s.sx *= r;
    s.sy *= r;
    s.m = m_new;
  }
}

// Combines two partial states over disjoint sets of keys. Commutative up to rounding.
template <typename T>
AMF_HD void soft_merge(SoftState<T>& s, const SoftState<T>& o) {
  if (o.l == T(0)) return;
  if (s.l == T(0)) {
    s = o;
    return;
  }
  const T m = s.m > o.m ? s.m : o.m;
  const T rs = amf_exp(s.m - m);
  const T ro = amf_exp(o.m - m);
  s.l = s.l * rs + o.l * ro;
  s.sx = s.sx * rs + o.sx * ro;
  s.sy = s.sy * rs + o.sy * ro;
  s.m = m;
}

// A block of n logits z[i] = scale * score[i] (scale > 0) at (x[i], y[i]): max first, then one
// exp per key against that max, so the loop has no data-dependent branch (vectorisable on the host).
template <typename T, typename S>
AMF_HD void soft_block(SoftState<T>& s, const S* score, T scale, const T* x, const T* y, int n) {
  if (n <= 0) return;
  // max of the raw scores, scaled once (scale > 0, so the order is the same)
  T bm = static_cast<T>(score[0]);
  AMF_SIMD_MAX(bm)
  for (int i = 0; i < n; ++i) {
    const T v = static_cast<T>(score[i]);
    bm = v > bm ? v : bm;
  }
  const T m_block = scale * bm;
  soft_rescale(s, m_block);
  // z - m as scale * (score - bm) + (m_block - m): both terms <= 0, and exactly 0 for the block's max key
  // when it is the max so far, however the compiler fuses them (scale * score - m is not: see nonpositive)
  const T shift = m_block - s.m;
  T l = T(0), sx = T(0), sy = T(0);
  AMF_SIMD_SUM(l, sx, sy)
  for (int i = 0; i < n; ++i) {
    const T e = amf_exp_finite(scale * (static_cast<T>(score[i]) - bm) + shift);
    l += e;
    sx += e * x[i];
    sy += e * y[i];
  }
  s.l += l;
  s.sx += sx;
  s.sy += sy;
}

template <typename T>
struct SoftResult {
  T ox;   // expected x of the target
  T oy;   // expected y of the target
  T lse;  // log sum exp(z) over the keys of the frame
};

template <typename T>
AMF_HD SoftResult<T> soft_finish(const SoftState<T>& s) {
  const T inv = T(1) / s.l;
  return SoftResult<T>{s.sx * inv, s.sy * inv, s.m + amf_log(s.l)};
}

// ---------------------------------------------------------------------------------------------
// backward: gradient of the soft target with respect to one logit
// ---------------------------------------------------------------------------------------------
// g_dot_o = <g, o> for the query and frame (computed once per row and frame).
// Returns dz = p * (<g, pos(n)> - <g, o>), p = exp(z - lse).
template <typename T>
AMF_HD T soft_logit_grad(T z, T lse, T gx, T gy, T x, T y, T g_dot_o) {
  const T p = amf_exp_finite(nonpositive(z - lse));
  return p * (gx * x + gy * y - g_dot_o);
}

}  // namespace ditflow_fast
