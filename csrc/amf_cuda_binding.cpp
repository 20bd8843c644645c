// Torch binding of the CUDA forward (amf_cuda.cu) to the schema declared in amf_ops.cpp.
// Compiled only in the CUDA build (setup.py with a CUDA toolkit and a CUDA build of torch).
//
// The kernel takes bf16/fp16 heads-concatenated tokens and accumulates in fp32; its outputs are
// fp32 whatever the input. The backward has no CUDA kernel yet: calling amf_backward on CUDA
// tensors raises the dispatcher's "no kernel for CUDA" error, and the Python dispatch declares the
// cuda backend non-differentiable.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "amf_cuda.h"

namespace ditflow_fast {
namespace {

std::tuple<at::Tensor, at::Tensor> amf_forward_cuda(const at::Tensor& qc_in, const at::Tensor& kc_in, int64_t frames,
                                                    int64_t height, int64_t width, double alpha, bool soft) {
  TORCH_CHECK(qc_in.is_cuda() && kc_in.is_cuda() && qc_in.device() == kc_in.device(),
              "ditflow_fast cuda kernel: qc and kc must be on the same CUDA device");
  TORCH_CHECK(qc_in.dim() == 3 && kc_in.sizes() == qc_in.sizes(), "ditflow_fast cuda kernel: qc and kc must both be "
              "[B, N, D], got ", qc_in.sizes(), " and ", kc_in.sizes());
  const auto dtype = qc_in.scalar_type();
  TORCH_CHECK(kc_in.scalar_type() == dtype && (dtype == at::kBFloat16 || dtype == at::kHalf),
              "ditflow_fast cuda kernel: qc and kc must both be bfloat16 or float16 (fp32 accumulation), got ",
              dtype, " and ", kc_in.scalar_type());
  TORCH_CHECK(frames >= 1 && height >= 1 && width >= 1 && qc_in.size(1) == frames * height * width,
              "ditflow_fast cuda kernel: N=", qc_in.size(1), " != frames*height*width=", frames * height * width);
  TORCH_CHECK(qc_in.size(0) <= 65535 && frames <= 65535 && qc_in.numel() < (int64_t(1) << 31) * 8,
              "ditflow_fast cuda kernel: batch and frames must be <= 65535");
  const c10::cuda::CUDAGuard guard(qc_in.device());
  const at::NoGradGuard no_grad;
  at::Tensor qc = qc_in.detach().contiguous(), kc = kc_in.detach().contiguous();
  const int64_t batch = qc.size(0), n = qc.size(1), dim = qc.size(2);
  // Zero columns do not change a dot product: pad D up to the kernel's chunk multiple.
  const int64_t pad = (kAmfCudaDimMultiple - dim % kAmfCudaDimMultiple) % kAmfCudaDimMultiple;
  if (pad) {
    qc = at::constant_pad_nd(qc, {0, pad});
    kc = at::constant_pad_nd(kc, {0, pad});
  }
  const auto f32 = qc.options().dtype(at::kFloat);
  at::Tensor target = at::empty({batch, n, frames, 2}, f32);
  at::Tensor lse = soft ? at::empty({batch, n, frames}, f32) : at::empty({0}, f32);
  if (batch == 0 || n == 0) return {target, lse};
  const cudaError_t err = amf_forward_cuda_launch(
      qc.data_ptr(), kc.data_ptr(), dtype == at::kBFloat16 ? AmfCudaDtype::kBFloat16 : AmfCudaDtype::kFloat16,
      static_cast<int>(batch), static_cast<int>(n), static_cast<int>(dim + pad), static_cast<int>(frames),
      static_cast<int>(height), static_cast<int>(width), static_cast<float>(alpha), soft, target.data_ptr<float>(),
      soft ? lse.data_ptr<float>() : nullptr, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "ditflow_fast cuda kernel launch failed: ", cudaGetErrorString(err));
  return {target, lse};
}

}  // namespace
}  // namespace ditflow_fast

TORCH_LIBRARY_IMPL(ditflow_fast_native, CUDA, m) { m.impl("amf_forward", &ditflow_fast::amf_forward_cuda); }
