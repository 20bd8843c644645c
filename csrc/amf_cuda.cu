// CUDA forward of the Attention Motion Flow on tensor cores (WMMA, bf16/fp16 in, fp32 accumulate).
//
// Includes only CUDA and csrc/ headers, so it compiles with plain nvcc (see .ci/native.sh, which
// checks registers and spills for sm_80 and sm_90). The torch binding is amf_cuda_binding.cpp.
//
// One block of 128 threads owns BM = 64 query rows of one batch element against one key frame j.
// It walks frame j's keys in tiles of BN = 64; for each tile it accumulates the 64 x 64 score tile
// over the concatenated-head dimension D in chunks of BK = 32 staged in shared memory (the next
// chunk is fetched into registers while the tensor cores work on the current one), writes the tile
// to shared memory and runs the epilogue from amf_reduce.h on it: two threads per query row, each
// keeping a running state over alternate columns, merged by a warp shuffle at the end.
// Nothing of size N x N exists anywhere; the extra memory is the [B, N, F] outputs.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include "amf_cuda.h"
#include "amf_reduce.h"

namespace ditflow_fast {
namespace {

using namespace nvcuda;

constexpr int BM = 64;         // query rows per block
constexpr int BN = 64;         // keys per score tile
constexpr int BK = 32;         // inner (head-concatenated) chunk staged in shared memory
constexpr int THREADS = 128;   // 4 warps, each computing a 32 x 32 quarter of the score tile
constexpr int LDT = BK + 8;    // smem row pitch of the q/k tiles in elements: 80 bytes, keeps the
                               // 16-byte vector stores aligned and spreads rows over the banks
constexpr int LDS = BN + 4;    // smem row pitch of the fp32 score tile
constexpr int VEC = 8;         // 16-bit elements per 16-byte vector load
constexpr int LOADS = BM * BK / VEC / THREADS;  // vectors per thread per tile (2)
static_assert(BM == BN, "the q and k tiles share one load schedule");
static_assert(LOADS * THREADS * VEC == BM * BK, "the tile loads must cover the tile exactly");
static_assert(BK % 16 == 0 && kAmfCudaDimMultiple % BK == 0, "D is consumed in whole chunks");

template <typename T>
struct __align__(128) Smem {
  T q[BM * LDT];
  T k[BN * LDT];
  float s[BM * LDS];
};

// Loads this thread's share of a BM x BK chunk of rows [row0, row0 + BM) (rows at or past
// row_end read as zeros) starting at column col0 of a row-major [*, dim] matrix.
template <typename T>
__device__ __forceinline__ void load_chunk(uint4 (&reg)[LOADS], const T* __restrict__ base, int row0, int row_end,
                                           int dim, int col0) {
#pragma unroll
  for (int v = 0; v < LOADS; ++v) {
    const int idx = threadIdx.x + v * THREADS;
    const int row = idx / (BK / VEC), col = (idx % (BK / VEC)) * VEC;
    reg[v] = make_uint4(0u, 0u, 0u, 0u);
    if (row0 + row < row_end)
      reg[v] = *reinterpret_cast<const uint4*>(base + static_cast<size_t>(row0 + row) * dim + col0 + col);
  }
}

template <typename T>
__device__ __forceinline__ void store_chunk(T* tile, const uint4 (&reg)[LOADS]) {
#pragma unroll
  for (int v = 0; v < LOADS; ++v) {
    const int idx = threadIdx.x + v * THREADS;
    const int row = idx / (BK / VEC), col = (idx % (BK / VEC)) * VEC;
    *reinterpret_cast<uint4*>(tile + row * LDT + col) = reg[v];
  }
}

template <typename T, bool SOFT>
__global__ void __launch_bounds__(THREADS)
    amf_forward_kernel(const T* __restrict__ qc, const T* __restrict__ kc, int n, int dim, int frames, int height,
                       int width, float alpha, float* __restrict__ target, float* __restrict__ lse) {
  __shared__ Smem<T> sm;
  const int m0 = blockIdx.x * BM, j = blockIdx.y, b = blockIdx.z;
  const int hw = height * width;
  const T* q_base = qc + static_cast<size_t>(b) * n * dim;
  const T* k_base = kc + (static_cast<size_t>(b) * n + static_cast<size_t>(j) * hw) * dim;
  const int warp = threadIdx.x / 32;
  const int wr = (warp / 2) * 32, wc = (warp % 2) * 32;  // this warp's quarter of the score tile
  const int row = threadIdx.x >> 1, half = threadIdx.x & 1;  // epilogue: row and column parity

  SoftState<float> soft_state = soft_init<float>();
  ArgmaxState<float> arg_state = argmax_init<float>();
  const int chunks = dim / BK;

  for (int n0 = 0; n0 < hw; n0 += BN) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) wmma::fill_fragment(acc[i][jj], 0.0f);

    uint4 q_reg[LOADS], k_reg[LOADS];
    load_chunk(q_reg, q_base, m0, n, dim, 0);
    load_chunk(k_reg, k_base, n0, hw, dim, 0);
    __syncthreads();  // the previous tile's epilogue is done with sm.s, and everyone with sm.q/k
    store_chunk(sm.q, q_reg);
    store_chunk(sm.k, k_reg);
    __syncthreads();
    for (int c = 0; c < chunks; ++c) {
      if (c + 1 < chunks) {  // fetch the next chunk while the tensor cores work on this one
        load_chunk(q_reg, q_base, m0, n, dim, (c + 1) * BK);
        load_chunk(k_reg, k_base, n0, hw, dim, (c + 1) * BK);
      }
#pragma unroll
      for (int kk = 0; kk < BK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a[2];
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bk[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], sm.q + (wr + i * 16) * LDT + kk, LDT);
#pragma unroll
        for (int jj = 0; jj < 2; ++jj) wmma::load_matrix_sync(bk[jj], sm.k + (wc + jj * 16) * LDT + kk, LDT);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int jj = 0; jj < 2; ++jj) wmma::mma_sync(acc[i][jj], a[i], bk[jj], acc[i][jj]);
      }
      if (c + 1 < chunks) {
        __syncthreads();  // all warps are done reading this chunk
        store_chunk(sm.q, q_reg);
        store_chunk(sm.k, k_reg);
        __syncthreads();
      }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int jj = 0; jj < 2; ++jj)
        wmma::store_matrix_sync(sm.s + (wr + i * 16) * LDS + wc + jj * 16, acc[i][jj], LDS, wmma::mem_row_major);
    __syncthreads();

    // Epilogue on the tile while it sits in shared memory: the steps of amf_reduce.h. The two
    // threads of a row take alternate columns (banks spread 2-way instead of 4-way with halves);
    // both states accept keys in any order.
    const float* srow = sm.s + row * LDS;
    for (int c = half; c < BN; c += 2) {
      const int key = n0 + c;
      if (key >= hw) break;
      if (SOFT) {
        soft_step(soft_state, alpha * srow[c], static_cast<float>(key % width), static_cast<float>(key / width));
      } else {
        argmax_step(arg_state, srow[c], key);
      }
    }
  }

  // The two threads of each row are adjacent lanes: merge their states, lane `half == 0` writes.
  const int m = m0 + row;
  const size_t out = (static_cast<size_t>(b) * n + m) * frames + j;
  if (SOFT) {
    SoftState<float> other;
    other.m = __shfl_xor_sync(0xffffffffu, soft_state.m, 1);
    other.l = __shfl_xor_sync(0xffffffffu, soft_state.l, 1);
    other.sx = __shfl_xor_sync(0xffffffffu, soft_state.sx, 1);
    other.sy = __shfl_xor_sync(0xffffffffu, soft_state.sy, 1);
    soft_merge(soft_state, other);
    if (half == 0 && m < n) {
      const SoftResult<float> r = soft_finish(soft_state);
      target[2 * out] = r.ox;
      target[2 * out + 1] = r.oy;
      lse[out] = r.lse;
    }
  } else {
    ArgmaxState<float> other;
    other.best = __shfl_xor_sync(0xffffffffu, arg_state.best, 1);
    other.index = __shfl_xor_sync(0xffffffffu, arg_state.index, 1);
    argmax_merge(arg_state, other);
    if (half == 0 && m < n) {
      target[2 * out] = static_cast<float>(arg_state.index % width);
      target[2 * out + 1] = static_cast<float>(arg_state.index / width);
    }
  }
}

template <typename T>
cudaError_t launch(const void* qc, const void* kc, int batch, int n, int dim, int frames, int height, int width,
                   float alpha, bool soft, float* target, float* lse, cudaStream_t stream) {
  const dim3 grid((n + BM - 1) / BM, frames, batch);
  const T* q = static_cast<const T*>(qc);
  const T* k = static_cast<const T*>(kc);
  if (soft) {
    amf_forward_kernel<T, true><<<grid, THREADS, 0, stream>>>(q, k, n, dim, frames, height, width, alpha, target, lse);
  } else {
    amf_forward_kernel<T, false><<<grid, THREADS, 0, stream>>>(q, k, n, dim, frames, height, width, alpha, target,
                                                               lse);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t amf_forward_cuda_launch(const void* qc, const void* kc, AmfCudaDtype dtype, int batch, int n, int dim,
                                    int frames, int height, int width, float alpha, bool soft, float* target,
                                    float* lse, cudaStream_t stream) {
  if (batch < 1 || frames < 1 || height < 1 || width < 1 || n != frames * height * width ||
      dim % kAmfCudaDimMultiple != 0 || dim < kAmfCudaDimMultiple || frames > 65535 || batch > 65535 ||
      (soft && lse == nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (dtype == AmfCudaDtype::kBFloat16)
    return launch<__nv_bfloat16>(qc, kc, batch, n, dim, frames, height, width, alpha, soft, target, lse, stream);
  return launch<__half>(qc, kc, batch, n, dim, frames, height, width, alpha, soft, target, lse, stream);
}

}  // namespace ditflow_fast
