// Host program around the CUDA forward, no torch: built and run by .ci/native.sh with plain nvcc.
//
// Everywhere: the launcher must refuse bad arguments with cudaErrorInvalidValue before touching the
// device, and a launch without a usable device must come back as an error, not a crash.
// On a machine with a GPU it also checks the kernel's numbers against a float64 computation on the
// host from the same bf16/fp16 values (docs/amf.md "Agreement"): soft relative error < 2e-2 (fp32
// accumulation gives ~1e-5 in practice), argmax within 1e-3 of the row maximum and equal to the
// host's lowest-index maximum wherever the top two differ by more than that.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "amf_cuda.h"

using ditflow_fast::AmfCudaDtype;
using ditflow_fast::amf_forward_cuda_launch;

static int failures = 0;
#define CHECK(cond, ...)                                          \
  do {                                                            \
    if (!(cond)) {                                                \
      std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);   \
      std::fprintf(stderr, __VA_ARGS__);                          \
      std::fprintf(stderr, "\n");                                 \
      ++failures;                                                 \
    }                                                             \
  } while (0)

static void check_argument_validation() {
  float out[16], lse[8];
  const char dummy[64] = {};
  const auto bf = AmfCudaDtype::kBFloat16;
  // D not a multiple of 32, N != F*h*w, missing lse in soft mode, empty frames: all refused up front.
  CHECK(amf_forward_cuda_launch(dummy, dummy, bf, 1, 4, 33, 1, 2, 2, 1.f, true, out, lse, 0) == cudaErrorInvalidValue,
        "dim=33 must be refused");
  CHECK(amf_forward_cuda_launch(dummy, dummy, bf, 1, 5, 32, 1, 2, 2, 1.f, false, out, lse, 0) == cudaErrorInvalidValue,
        "N != frames*height*width must be refused");
  CHECK(amf_forward_cuda_launch(dummy, dummy, bf, 1, 4, 32, 1, 2, 2, 1.f, true, out, nullptr, 0) ==
            cudaErrorInvalidValue,
        "soft mode without lse must be refused");
  CHECK(amf_forward_cuda_launch(dummy, dummy, bf, 1, 0, 32, 0, 2, 2, 1.f, false, out, lse, 0) == cudaErrorInvalidValue,
        "frames=0 must be refused");
}

template <typename T>
static T to_half(float v);
template <>
__nv_bfloat16 to_half<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <>
__half to_half<__half>(float v) { return __float2half(v); }
static float from_half(__nv_bfloat16 v) { return __bfloat162float(v); }
static float from_half(__half v) { return __half2float(v); }

template <typename T>
static void check_numbers(AmfCudaDtype dtype, int batch, int frames, int height, int width, int dim, unsigned seed) {
  const int hw = height * width, n = frames * hw;
  const size_t count = static_cast<size_t>(batch) * n * dim;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<T> q(count), k(count);
  std::vector<double> qd(count), kd(count);
  for (size_t i = 0; i < count; ++i) {
    q[i] = to_half<T>(normal(rng));
    k[i] = to_half<T>(normal(rng));
    qd[i] = from_half(q[i]);
    kd[i] = from_half(k[i]);
  }
  const double alpha = 2.0 / std::sqrt(static_cast<double>(dim));  // logits alpha * s of order 2
  T *dq = nullptr, *dk = nullptr;
  float *dt = nullptr, *dl = nullptr;
  cudaMalloc(&dq, count * sizeof(T));
  cudaMalloc(&dk, count * sizeof(T));
  cudaMalloc(&dt, sizeof(float) * batch * n * frames * 2);
  cudaMalloc(&dl, sizeof(float) * batch * n * frames);
  cudaMemcpy(dq, q.data(), count * sizeof(T), cudaMemcpyHostToDevice);
  cudaMemcpy(dk, k.data(), count * sizeof(T), cudaMemcpyHostToDevice);
  std::vector<float> soft(batch * n * frames * 2), arg(batch * n * frames * 2), lse(batch * n * frames);
  for (int pass = 0; pass < 2; ++pass) {
    const bool is_soft = pass == 0;
    cudaMemset(dt, 0xff, sizeof(float) * batch * n * frames * 2);  // NaN poison: every entry must be written
    cudaError_t err = amf_forward_cuda_launch(dq, dk, dtype, batch, n, dim, frames, height, width,
                                              static_cast<float>(alpha), is_soft, dt, dl, 0);
    if (err == cudaSuccess) err = cudaDeviceSynchronize();
    CHECK(err == cudaSuccess, "launch failed: %s", cudaGetErrorString(err));
    std::vector<float>& dst = is_soft ? soft : arg;
    cudaMemcpy(dst.data(), dt, sizeof(float) * dst.size(), cudaMemcpyDeviceToHost);
  }
  cudaMemcpy(lse.data(), dl, sizeof(float) * lse.size(), cudaMemcpyDeviceToHost);
  double num = 0, den = 0, worst_gap = 0;
  int ambiguous_mismatch = 0;
  std::vector<double> s(hw);
  for (int b = 0; b < batch; ++b)
    for (int m = 0; m < n; ++m)
      for (int j = 0; j < frames; ++j) {
        double mx = -HUGE_VAL;
        int best = 0;
        for (int c = 0; c < hw; ++c) {
          double acc = 0;
          const double* qr = &qd[(static_cast<size_t>(b) * n + m) * dim];
          const double* kr = &kd[(static_cast<size_t>(b) * n + j * hw + c) * dim];
          for (int e = 0; e < dim; ++e) acc += qr[e] * kr[e];
          s[c] = acc;
          if (acc > mx) mx = acc, best = c;
        }
        double l = 0, sx = 0, sy = 0, second = -HUGE_VAL;
        for (int c = 0; c < hw; ++c) {
          const double e = std::exp(alpha * (s[c] - mx));
          l += e, sx += e * (c % width), sy += e * (c / width);
          if (c != best && s[c] > second) second = s[c];
        }
        const size_t o = (static_cast<size_t>(b) * n + m) * frames + j;
        const double ox = sx / l, oy = sy / l;
        num += (soft[2 * o] - ox) * (soft[2 * o] - ox) + (soft[2 * o + 1] - oy) * (soft[2 * o + 1] - oy);
        den += ox * ox + oy * oy;
        const int chosen = static_cast<int>(arg[2 * o + 1]) * width + static_cast<int>(arg[2 * o]);
        CHECK(chosen >= 0 && chosen < hw, "argmax target outside the frame");
        if (chosen >= 0 && chosen < hw) worst_gap = std::fmax(worst_gap, mx - s[chosen]);
        if (mx - second > 1e-3 && chosen != best) ++ambiguous_mismatch;
        CHECK(std::fabs(lse[o] - (alpha * mx + std::log(l))) < 1e-3 * (1 + std::fabs(alpha * mx)), "lse wrong");
      }
  const double rel = std::sqrt(num / den);
  std::printf("  %s B=%d F=%d %dx%d D=%d: soft rel err %.2e, argmax worst gap %.2e\n",
              dtype == AmfCudaDtype::kBFloat16 ? "bf16" : "fp16", batch, frames, height, width, dim, rel, worst_gap);
  CHECK(rel < 2e-2, "soft relative error %g", rel);
  CHECK(worst_gap <= 1e-3, "argmax picked a key %g below the maximum", worst_gap);
  CHECK(ambiguous_mismatch == 0, "%d unambiguous argmax entries differ", ambiguous_mismatch);
  cudaFree(dq), cudaFree(dk), cudaFree(dt), cudaFree(dl);
}

int main() {
  check_argument_validation();
  int devices = 0;
  const cudaError_t err = cudaGetDeviceCount(&devices);
  if (err != cudaSuccess || devices == 0) {
    // Without a device, a real launch must report an error rather than crash.
    float out[8], lse[4];
    const char dummy[256] = {};
    const cudaError_t launch = amf_forward_cuda_launch(dummy, dummy, AmfCudaDtype::kBFloat16, 1, 4, 32, 1, 2, 2, 1.f,
                                                       true, out, lse, 0);
    CHECK(launch != cudaSuccess, "a launch without a device must fail");
    std::printf("no CUDA device (%s): argument checks only; launch reported: %s\n", cudaGetErrorString(err),
                cudaGetErrorString(launch));
  } else {
    check_numbers<__nv_bfloat16>(AmfCudaDtype::kBFloat16, 2, 3, 5, 7, 64, 1u);
    check_numbers<__half>(AmfCudaDtype::kFloat16, 1, 2, 15, 22, 256, 2u);
    check_numbers<__nv_bfloat16>(AmfCudaDtype::kBFloat16, 1, 1, 1, 13, 32, 3u);
  }
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return EXIT_FAILURE;
  }
  std::printf("cuda_launch_check: all checks passed\n");
  return EXIT_SUCCESS;
}
