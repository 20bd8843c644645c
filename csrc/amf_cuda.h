// Host entry of the CUDA forward kernel (amf_cuda.cu). Plain C++: no torch, so the .cu compiles
// with nvcc alone; the torch binding (amf_cuda_binding.cpp) checks tensors and calls this.
#pragma once

#include <cuda_runtime_api.h>

namespace ditflow_fast {

enum class AmfCudaDtype { kBFloat16 = 0, kFloat16 = 1 };

// qc, kc: [B, N, D] row-major, bf16 or fp16, D a multiple of kAmfCudaDimMultiple (zero-pad otherwise;
// zeros do not change a dot product), 16-byte aligned. N = frames * height * width.
// target: [B, N, frames, 2] fp32; lse: [B, N, frames] fp32 (soft only; may be null for argmax).
// soft: target = softmax(alpha * <q, k>)-weighted mean position over each frame's keys;
// argmax: target = position of the first maximum of <q, k> (alpha unused).
// Returns the launch error, if any.
constexpr int kAmfCudaDimMultiple = 32;

cudaError_t amf_forward_cuda_launch(const void* qc, const void* kc, AmfCudaDtype dtype, int batch, int n, int dim,
                                    int frames, int height, int width, float alpha, bool soft, float* target,
                                    float* lse, cudaStream_t stream);

}  // namespace ditflow_fast
