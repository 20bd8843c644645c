// bf16 screen + float64 rescoring for the float32 argmax forward; the why is in amf_cpu_screen.h.
//
// Error bound, per query m and key n, raw dot-product units. With q~ = bf16(q), dq = q - q~ (same
// for k) and s~ the GEMM's bf16 output: s - s~ = q~.dk + dq.k~ + dq.dk + (fp32 accumulation error)
// + (bf16 rounding of the result), so by Cauchy-Schwarz
//   |s - s~| <= |q~||dk| + |dq||k~| + |dq||dk| + g_D |q~||k~| + u/(1-u) |s~| + tiny,
// g_D = D 2^-24 / (1 - D 2^-24) (float32 accumulation in any order), u = 2^-7 (a whole bf16 ulp,
// so that truncating the result is covered as well as rounding it), and tiny = 2^-120 (sqrt(D)
// (|q~| + |k~|) + D) covering subnormal inputs and products that bf16 dot-product instructions
// flush to zero. Scores that are inf or NaN void the argument: such tiles fall back.
// tests/core/test_cpu_screen.py checks this error model against the GEMM torch actually runs here.
// The key norms are replaced by their maximum over the key frame and |s~| by the segment's
// maximum, so E is one number per (query, key frame), and the screen is two vectorised passes over
// the segment (maximum, magnitude and finiteness) plus one that collects the candidates.
#include "amf_cpu_screen.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "amf_cpu_gemm.h"
#include "amf_cpu_scratch.h"
#include "amf_cpu_tiling.h"
#include "amf_reduce.h"

namespace ditflow_fast {
namespace {

// Above this many candidates per (query, key frame) on average a tile is redone as a float32 GEMM:
// it caps the rescoring work (about 3 candidates are typical; the value is a judgement, not tuned).
constexpr int64_t kMaxCandidatesPerSegment = 16;

inline float bf16_bits_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// x [rows, d] -> bf16 bits (round to nearest even; inputs are finite), and per row ||bf16(x)|| and
// ||x - bf16(x)|| accumulated in float64.
AMF_TARGET_CLONES void round_rows_range(const float* x, int64_t d, uint16_t* out, double* norm, double* resid,
                                        int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const float* xr = x + r * d;
    uint16_t* o = out + r * d;
    double s = 0.0, t = 0.0;
    AMF_SIMD_SUM(s, t)
    for (int64_t i = 0; i < d; ++i) {
      uint32_t u;
      std::memcpy(&u, xr + i, sizeof u);
      const uint32_t h = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
      o[i] = static_cast<uint16_t>(h);
      const uint32_t back = h << 16;
      float hf;
      std::memcpy(&hf, &back, sizeof hf);
      const double delta = static_cast<double>(xr[i]) - static_cast<double>(hf);
      s += static_cast<double>(hf) * hf;
      t += delta * delta;
    }
    norm[r] = std::sqrt(s);
    resid[r] = std::sqrt(t);
  }
}

// Maximum and largest magnitude of a segment; false when a score is inf or NaN (then the bound
// argument does not hold and the caller falls back: v - v is NaN exactly for those).
AMF_TARGET_CLONES bool segment_stats(const uint16_t* s, int64_t n, float* max_out, float* absmax_out) {
  float m = -std::numeric_limits<float>::infinity(), a = 0.0f, bad = 0.0f;
  AMF_SIMD_MAX(m, a)
  for (int64_t i = 0; i < n; ++i) {
    const float v = bf16_bits_to_float(s[i]);
    m = std::max(m, v);
    a = std::max(a, std::fabs(v));
  }
  AMF_SIMD_SUM(bad)
  for (int64_t i = 0; i < n; ++i) {
    const float v = bf16_bits_to_float(s[i]);
    bad += v - v;
  }
  *max_out = m;
  *absmax_out = a;
  return bad == 0.0f;
}

int64_t collect(const uint16_t* s, int64_t n, float threshold, int32_t* out) {
  int64_t c = 0;
  for (int64_t i = 0; i < n; ++i)
    if (bf16_bits_to_float(s[i]) >= threshold) out[c++] = static_cast<int32_t>(i);
  return c;
}

// Exact up to float64 rounding: a product of two floats fits a double. T: float or bf16 inputs.
template <typename T>
AMF_INLINE double dot_impl(const T* a, const T* b, int64_t d) {
  double s = 0.0;
  AMF_SIMD_SUM(s)
  for (int64_t i = 0; i < d; ++i) s += static_cast<double>(static_cast<float>(a[i])) * static_cast<float>(b[i]);
  return s;
}

// Two keys against one query in one pass: two independent memory streams keep more loads in flight
// (the candidates' key rows are scattered over the frame and mostly come from L3 or memory).
template <typename T>
AMF_INLINE void dot2_impl(const T* q, const T* ka, const T* kb, int64_t d, double* va, double* vb) {
  double sa = 0.0, sb = 0.0;
  AMF_SIMD_SUM(sa, sb)
  for (int64_t i = 0; i < d; ++i) {
    const double x = static_cast<float>(q[i]);
    sa += x * static_cast<float>(ka[i]);
    sb += x * static_cast<float>(kb[i]);
  }
  *va = sa;
  *vb = sb;
}

AMF_TARGET_CLONES double dot_f64(const float* a, const float* b, int64_t d) { return dot_impl(a, b, d); }
AMF_TARGET_CLONES double dot_f64(const c10::BFloat16* a, const c10::BFloat16* b, int64_t d) {
  return dot_impl(a, b, d);
}
AMF_TARGET_CLONES void dot2_f64(const float* q, const float* ka, const float* kb, int64_t d, double* va, double* vb) {
  dot2_impl(q, ka, kb, d, va, vb);
}
AMF_TARGET_CLONES void dot2_f64(const c10::BFloat16* q, const c10::BFloat16* ka, const c10::BFloat16* kb, int64_t d,
                                double* va, double* vb) {
  dot2_impl(q, ka, kb, d, va, vb);
}

// Exact scores of a segment's candidates (ascending key indices), folded by the spec's rule: the
// largest score, the lowest index among equals.
struct Best {
  double value = -std::numeric_limits<double>::infinity();
  int32_t index = -1;
  void fold(double v, int32_t n) {
    if (index < 0 || v > value || (v == value && n < index)) {
      value = v;
      index = n;
    }
  }
};

template <typename T>
void rescore(const T* qrow, const T* kframe, int64_t d, const int32_t* cand, int64_t count, Best& best) {
  int64_t c = 0;
  for (; c + 1 < count; c += 2) {
    double va, vb;
    dot2_f64(qrow, kframe + cand[c] * d, kframe + cand[c + 1] * d, d, &va, &vb);
    best.fold(va, cand[c]);
    best.fold(vb, cand[c + 1]);
  }
  if (c < count) best.fold(dot_f64(qrow, kframe + cand[c] * d, d), cand[c]);
}

// The largest float not above t (so that "v >= result" admits every float v >= t).
float float_at_or_below(double t) {
  float f = static_cast<float>(t);
  if (static_cast<double>(f) > t) f = std::nextafter(f, -std::numeric_limits<float>::infinity());
  return f;
}

struct Segment {
  float max;     // screened maximum
  double bound;  // E: |s - s~| <= E for every key of the segment
};

struct Rounded {
  at::Tensor bits;                 // [B, N, D] bf16
  std::vector<double> norm, resid;  // per row
};

// bf16 inputs are their own rounding: their norms, no residual.
AMF_TARGET_CLONES void bf16_norms_range(const uint16_t* x, int64_t d, double* norm, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    double s = 0.0;
    AMF_SIMD_SUM(s)
    for (int64_t i = 0; i < d; ++i) {
      const double v = bf16_bits_to_float(x[r * d + i]);
      s += v * v;
    }
    norm[r] = std::sqrt(s);
  }
}

Rounded round_all(const at::Tensor& x, Slot slot) {
  const int64_t rows = x.size(0) * x.size(1), d = x.size(2);
  if (x.scalar_type() == at::kBFloat16) {
    Rounded r{x, std::vector<double>(rows), std::vector<double>(rows, 0.0)};
    const auto* bits = reinterpret_cast<const uint16_t*>(x.const_data_ptr<at::BFloat16>());
    at::parallel_for(0, rows, 16, [&](int64_t b, int64_t e) { bf16_norms_range(bits, d, r.norm.data(), b, e); });
    return r;
  }
  Rounded r{scratch(slot, x.sizes(), at::kBFloat16), std::vector<double>(rows),
            std::vector<double>(rows)};
  const float* src = x.data_ptr<float>();
  auto* dst = reinterpret_cast<uint16_t*>(r.bits.data_ptr<at::BFloat16>());
  at::parallel_for(0, rows, 16, [&](int64_t b, int64_t e) {
    round_rows_range(src, d, dst, r.norm.data(), r.resid.data(), b, e);
  });
  return r;
}

}  // namespace

bool argmax_screen_enabled() {
  const char* v = std::getenv("DITFLOW_FAST_CPU_SCREEN");
  if (v && std::strcmp(v, "0") == 0) return false;
#if defined(__GNUC__) && defined(__x86_64__)
  // without these the bf16 GEMM is emulated and slower than float32: the screen would not pay
  return __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-tile");
#else
  return false;
#endif
}

namespace {

template <typename T>
void screened_impl(const at::Tensor& qc, const at::Tensor& kc, int64_t frames, int64_t hw, const float* px,
                   const float* py, float* target) {
  const int64_t batch = qc.size(0), n = qc.size(1), d = qc.size(2);
  const double eps32 = std::ldexp(1.0, -24), u_bf16 = std::ldexp(1.0, -8);
  const double gamma = d * eps32 / (1.0 - d * eps32);
  const double u_out = 2.0 * u_bf16 / (1.0 - 2.0 * u_bf16);  // a whole ulp: RNE or truncation
  const double flush = std::ldexp(1.0, -120);
  const double root_d = std::sqrt(static_cast<double>(d));
  const Rounded qr = round_all(qc, Slot::kQBf16), kr = round_all(kc, Slot::kKBf16);
  // the key norms' maxima per (batch, key frame)
  std::vector<double> kn_max(batch * frames, 0.0), kd_max(batch * frames, 0.0);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t key = 0; key < n; ++key) {
      const int64_t bj = b * frames + key / hw;
      kn_max[bj] = std::max(kn_max[bj], kr.norm[b * n + key]);
      kd_max[bj] = std::max(kd_max[bj], kr.resid[b * n + key]);
    }
  // tall tiles within 4 MiB, never cut to L2: the screen's tiles are bf16 and its cost is the
  // rescoring, and there tall tiles measured best (cpu-5b: 768-row tiles 0.57x of the GEMM, 192-row 0.65x)
  const Plan plan = forward_plan(batch, n, frames, hw, sizeof(float), false);
  // stage 1's window in units of E (DITFLOW_FAST_CPU_STAGE1_PCT, percent, 125): a knob for tests
  // (1% forces stage 2 nearly everywhere) and tuning; any value gives the same, exact result.
  const double stage1_window = env_int("DITFLOW_FAST_CPU_STAGE1_PCT", 125) / 100.0;
  const T* q32 = qc.const_data_ptr<T>();  // the inputs, rescored in float64
  const T* k32 = kc.const_data_ptr<T>();
  at::parallel_for(0, batch * plan.tiles_per_batch, 1, [&](int64_t begin, int64_t end) {
    at::Tensor tile = at::empty({plan.rows * plan.group * hw}, qr.bits.options());
    at::Tensor tile32;  // only for tiles that fall back to float32
    std::vector<int32_t> cand(plan.rows * plan.group * hw);
    std::vector<int64_t> start(plan.rows * plan.group + 1);
    std::vector<Segment> segs(plan.rows * plan.group);
    std::vector<int32_t> stage1, stage2;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / plan.tiles_per_batch;
      const int64_t r0 = (item % plan.tiles_per_batch) * plan.rows;
      const int64_t nr = std::min(plan.rows, n - r0);
      if (nr <= 0) continue;
      for (int64_t j0 = 0; j0 < frames; j0 += plan.group) {
        const int64_t g = std::min(plan.group, frames - j0);
        at::Tensor s = tile.narrow(0, 0, nr * g * hw).view({nr, g * hw});
        at::mm_out(s, qr.bits[b].narrow(0, r0, nr), kr.bits[b].narrow(0, j0 * hw, g * hw).t());
        const auto* sb = reinterpret_cast<const uint16_t*>(s.data_ptr<at::BFloat16>());
        const int64_t cap = nr * g * kMaxCandidatesPerSegment;
        int64_t total = 0;
        bool fallback = false;
        for (int64_t r = 0; r < nr && !fallback; ++r) {
          const int64_t m = b * n + r0 + r;
          for (int64_t jj = 0; jj < g; ++jj) {
            const int64_t bj = b * frames + j0 + jj;
            const uint16_t* seg = sb + r * g * hw + jj * hw;
            float mx, amax;
            const bool finite = segment_stats(seg, hw, &mx, &amax);
            const double e = (qr.norm[m] * kd_max[bj] + qr.resid[m] * kn_max[bj] + qr.resid[m] * kd_max[bj] +
                              gamma * qr.norm[m] * kn_max[bj] + u_out * amax +
                              flush * (root_d * (qr.norm[m] + kn_max[bj]) + d)) *
                             (1.0 + 1e-6);
            const double threshold = static_cast<double>(mx) - 2.0 * e;
            start[r * g + jj] = total;
            segs[r * g + jj] = {mx, e};
            // overflow (inf or NaN scores, an infinite bound) or too many candidates: float32 GEMM
            fallback = !finite || !std::isfinite(threshold);
            if (fallback) break;
            total += collect(seg, hw, float_at_or_below(threshold), cand.data() + total);
            fallback = total > cap;
            if (fallback) break;
          }
        }
        start[nr * g] = total;
        if (fallback) {
          if (!tile32.defined()) tile32 = at::empty({plan.rows * plan.group * hw}, qc.options().dtype(at::kFloat));
          at::Tensor s32 = tile32.narrow(0, 0, nr * g * hw).view({nr, g * hw});
          const at::Tensor keys32 = kc[b].narrow(0, j0 * hw, g * hw).to(at::kFloat);  // bf16 inputs: exact
          gemm_out(s32, qc[b].narrow(0, r0, nr).to(at::kFloat), keys32.t());
          const TileArgs<float> args{s32.data_ptr<float>(), s32.stride(0), nr, g, hw, frames,
                                     (b * n + r0) * frames + j0, 1.0f, px, py, target, nullptr};
          reduce_tile(args, false);
          continue;
        }
        for (int64_t r = 0; r < nr; ++r) {
          const T* qrow = q32 + (b * n + r0 + r) * d;
          for (int64_t jj = 0; jj < g; ++jj) {
            const int64_t seg_id = r * g + jj;
            const int32_t* c = cand.data() + start[seg_id];
            const int64_t count = start[seg_id + 1] - start[seg_id];
            int32_t index = c[0];  // a single candidate is the argmax: nothing to rescore
            if (count > 1) {
              // Stage 1 rescores only the keys within 1.25 E of the screened maximum; if
              // the best exact score b clears t1 + E, no key below t1 can reach it (its exact score
              // is below t1 + E), so stage 2, the rest of the 2E window, is skipped. On normal
              // inputs of the cpu-5b shape (a Python model of this screen) a quarter of the
              // segments have one candidate, stage 1 rescores 1.9 keys per segment against 3.4 in
              // the window, and stage 2 is never needed.
              const Segment& sg = segs[seg_id];
              const float t1 = float_at_or_below(static_cast<double>(sg.max) - stage1_window * sg.bound);
              const uint16_t* seg = sb + r * g * hw + jj * hw;
              stage1.clear();
              stage2.clear();
              for (int64_t i = 0; i < count; ++i)
                (bf16_bits_to_float(seg[c[i]]) >= t1 ? stage1 : stage2).push_back(c[i]);
              const T* kframe = k32 + (b * n + (j0 + jj) * hw) * d;
              Best best;
              rescore(qrow, kframe, d, stage1.data(), static_cast<int64_t>(stage1.size()), best);
              if (!(best.value >= static_cast<double>(t1) + sg.bound))
                rescore(qrow, kframe, d, stage2.data(), static_cast<int64_t>(stage2.size()), best);
              index = best.index;
            }
            float* out = target + 2 * ((b * n + r0 + r) * frames + j0 + jj);
            out[0] = px[index];
            out[1] = py[index];
          }
        }
      }
    }
  });
}

}  // namespace

void argmax_forward_screened(const at::Tensor& qc, const at::Tensor& kc, int64_t frames, int64_t hw,
                             const float* px, const float* py, float* target) {
  if (qc.scalar_type() == at::kBFloat16)
    screened_impl<c10::BFloat16>(qc, kc, frames, hw, px, py, target);
  else
    screened_impl<float>(qc, kc, frames, hw, px, py, target);
}

}  // namespace ditflow_fast
