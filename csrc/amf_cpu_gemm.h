// The float32 GEMMs of the CPU kernels: ATen's (MKL) or, where that is faster, oneDNN's.
//
// MKL runs its AVX2 code on CPUs that are not Intel's. On an AMD EPYC of family 26 (Zen 5, full-width
// AVX-512) oneDNN's float32 matmul ran 1320 x 3072 x 1320 in 0.46x of MKL's time on one thread and 0.49x on
// two (docs/runs/onednn_gemm/). So on a CPU with AVX-512 (BW, VL, DQ) that is not Intel's, float32 tiles go
// through ATen's oneDNN matmul, still float32 in and out, accumulated in float32: exact like MKL's, in
// another order. DITFLOW_FAST_CPU_ONEDNN=0 keeps MKL; =1 takes oneDNN on any CPU with those units.
#pragma once

#include <ATen/core/Tensor.h>

namespace ditflow_fast {

// Whether the CPU is Intel's, where MKL runs its own AVX-512 code.
bool cpu_is_intel();

// Whether gemm_out sends float32 to oneDNN in this process (read per call: the knob, and
// torch.backends.mkldnn.enabled).
bool onednn_gemm_enabled();

// out = beta * out + alpha * (a @ b), 2-D; a or b may be transposed views of contiguous matrices.
void gemm_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, double beta = 0.0,
              double alpha = 1.0);

}  // namespace ditflow_fast
