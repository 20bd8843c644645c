// Every schema of the native AMF ops, in one place, and their CPU implementations.
//
// The ops live in the namespace "ditflow_fast_native" (torch.ops.ditflow_fast_native.*), apart from
// any Python-level op the package defines under "ditflow_fast". The CUDA implementations, when that
// extension is built, register against these same schemas from amf_cuda_binding.cpp.
//
// Layout shared by every op: qc, kc are the heads-concatenated video tokens [B, N, D] (N = F*h*w,
// D = heads * head_dim); target [B, N, F, 2] holds the absolute (x, y) the query m attends to in
// frame j; lse [B, N, F] the log-sum-exp of the soft logits alpha * <qc[m], kc[n]> over frame j.
#include <torch/library.h>

#include "amf_cpu.h"
#include "amf_cpu_bf16.h"
#include "amf_cpu_gather.h"
#include "amf_cpu_gemm.h"
#include "amf_cpu_scratch.h"
#include "amf_cpu_screen.h"

// Bumped whenever a schema below or the meaning of an op changes: ditflow_fast/_native.py refuses a
// prebuilt module of another version (a stale build) with a message instead of failing mid-call.
constexpr int64_t kAbiVersion = 9;

TORCH_LIBRARY(ditflow_fast_native, m) {
  m.def("abi_version() -> int", [] { return kAbiVersion; });
  // Whether the float32 argmax forward on the CPU takes the bf16 screen (amf_cpu_screen.h) on this
  // machine now (the CPU multiplies bf16 natively and DITFLOW_FAST_CPU_SCREEN is not "0").
  m.def("argmax_screen_enabled() -> bool", [] { return ditflow_fast::argmax_screen_enabled(); });
  // Whether bf16 qc, kc are multiplied as bf16 (amf_cpu_bf16.h) rather than upcast to float32 first.
  m.def("bf16_gemm_enabled() -> bool", [] { return ditflow_fast::bf16_gemm_enabled(); });
  // Whether float32 GEMMs go to oneDNN rather than MKL (amf_cpu_gemm.h).
  m.def("onednn_gemm_enabled() -> bool", [] { return ditflow_fast::onednn_gemm_enabled(); });
  // A CPU buffer of the slot kept between calls (amf_cpu_scratch.h; the Python side gathers qc into slot
  // 0 and kc into slot 1, and lays the gradients out in 12 and 13), the bytes forgotten by dropping them
  // all, and the bytes kept now.
  m.def("scratch(int slot, int[] sizes, ScalarType dtype) -> Tensor", [](int64_t slot, c10::IntArrayRef sizes,
                                                                         c10::ScalarType dtype) {
    TORCH_CHECK(slot == 0 || slot == 1 || slot == 12 || slot == 13,
                "ditflow_fast scratch: slot must be 0 (qc), 1 (kc), 12 (q's gradient) or 13 (k's), got ", slot);
    return ditflow_fast::scratch(static_cast<ditflow_fast::Slot>(slot), sizes, dtype);
  });
  // q or k [B, H, T, d] -> (its heads-concatenated video tokens in slot 0 or 1, max|t| or NaN): amf_cpu_gather.h
  m.def("gather_checked(Tensor t, int text_tokens, int slot) -> (Tensor, float)",
        [](const at::Tensor& t, int64_t text_tokens, int64_t slot) {
          TORCH_CHECK(slot == 0 || slot == 1, "ditflow_fast gather_checked: slot must be 0 (qc) or 1 (kc), got ", slot);
          return ditflow_fast::gather_checked(t, text_tokens, slot);
        });
  m.def("release_scratch() -> int", [] { return ditflow_fast::release_scratch(); });
  m.def("scratch_bytes() -> int", [] { return ditflow_fast::scratch_bytes(); });
  // soft=True: softmax-weighted mean position and lse; soft=False: position of the first maximum of
  // <qc[m], kc[n]> (alpha is ignored) and an empty lse.
  m.def("amf_forward(Tensor qc, Tensor kc, int frames, int height, int width, float alpha, bool soft) "
        "-> (Tensor target, Tensor lse)");
  // The soft forward that also returns the raw scores <qc[m], kc[n]> [B, N, N] for the backward (CPU).
  m.def("amf_forward_scores(Tensor qc, Tensor kc, int frames, int height, int width, float alpha) "
        "-> (Tensor target, Tensor lse, Tensor scores)");
  // Soft-mode gradients of target with respect to qc and kc given grad = dL/dtarget [B, N, F, 2];
  // an unrequested gradient comes back empty; scores (from amf_forward_scores) spare a recompute.
  // transposed: float32/float64 gradients come back as [B, N, D] views of [B, D, N] buffers, which the
  // GEMMs fill faster, for a caller that re-lays them out anyway (the bf16 path ignores it).
  m.def("amf_backward(Tensor qc, Tensor kc, Tensor target, Tensor lse, Tensor grad, int frames, int height, "
        "int width, float alpha, bool need_dq, bool need_dk, Tensor? scores=None, bool transposed=False) "
        "-> (Tensor dqc, Tensor dkc)");
}

TORCH_LIBRARY_IMPL(ditflow_fast_native, CPU, m) {
  m.impl("amf_forward", &ditflow_fast::amf_forward_cpu);
  m.impl("amf_forward_scores", &ditflow_fast::amf_forward_scores_cpu);
  m.impl("amf_backward", &ditflow_fast::amf_backward_cpu);
}
