// Fused CPU kernels of the Attention Motion Flow: one pass over the scores, tile by tile.
//
// Forward: work is blocked over (query tile of R rows) x (group of key frames). Each score tile
// S = Q_tile @ K_group^T comes from a single-threaded GEMM inside our parallel region (MKL, or for
// float32 oneDNN where MKL runs its AVX2 code: amf_cpu_gemm.h) into a per-thread buffer of at most
// 4 MiB (in soft mode with MKL, for frames of about 1,000 keys and more, of this core's L2:
// amf_cpu_tiling.h says when and what was measured), and is reduced by the steps of amf_reduce.h
// (argmax, or the soft-argmax with its log-sum-exp) right after, while it is still in cache. Extra
// memory: one tile per thread plus the [B, N, F] outputs (and bf16 inputs' packed keys), never N x N
// unless amf_forward_scores keeps the scores for the backward. Single-threaded
// MKL reached 94.7 GFLOP/s on 256 x 1320 x 3072 tiles and 97.8 on 660 x 1320 x 3072 (99.0 on the
// whole 1320^2 problem) on the 2-core CI machine, hence tall tiles where nothing else was measured.
// The argmax forward takes the bf16 screen of amf_cpu_screen.cpp where the CPU multiplies bf16
// natively (same result, the exact argmax; DITFLOW_FAST_CPU_SCREEN=0 turns it off). bf16 inputs
// get their soft score tiles in float32 from amf_cpu_bf16.cpp's AVX512-BF16 kernel instead of MKL, at
// about twice the float32 rate (DITFLOW_FAST_CPU_BF16=0 upcasts them to float32 instead).
// Backward (soft): row chunks of at most 64 MiB of scores, see backward_impl; bf16 inputs where the
// CPU multiplies bf16 take bf16 gradient GEMMs instead, see backward_bf16.
// Tuning knobs for experiments (environment, read per call): amf_cpu_tiling.h for the forward tiles,
// DITFLOW_FAST_CPU_BWD_ROWS (backward rows per chunk, from the 64 MiB budget).
#include "amf_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <optional>
#include <string_view>
#include <type_traits>
#include <vector>

#include "amf_cpu_bf16.h"
#include "amf_cpu_gemm.h"
#include "amf_cpu_scratch.h"
#include "amf_cpu_screen.h"
#include "amf_cpu_tiling.h"
#include "amf_reduce.h"

namespace ditflow_fast {
namespace {

template <typename T>
void coords(int64_t height, int64_t width, std::vector<T>& x, std::vector<T>& y) {
  x.resize(height * width);
  y.resize(height * width);
  for (int64_t s = 0; s < height * width; ++s) {
    x[s] = static_cast<T>(s % width);
    y[s] = static_cast<T>(s / width);
  }
}

void check_inputs(const at::Tensor& qc, const at::Tensor& kc, int64_t frames, int64_t height, int64_t width) {
  TORCH_CHECK(qc.device().is_cpu() && kc.device().is_cpu(), "ditflow_fast cpu kernel: qc and kc must be CPU tensors");
  TORCH_CHECK(qc.dim() == 3 && kc.sizes() == qc.sizes(), "ditflow_fast cpu kernel: qc and kc must both be [B, N, D], got ",
              qc.sizes(), " and ", kc.sizes());
  TORCH_CHECK(qc.scalar_type() == kc.scalar_type() &&
                  (qc.scalar_type() == at::kFloat || qc.scalar_type() == at::kDouble ||
                   qc.scalar_type() == at::kBFloat16),
              "ditflow_fast cpu kernel: qc and kc must both be float32, float64 or bfloat16");
  TORCH_CHECK(frames >= 1 && height >= 1 && width >= 1, "ditflow_fast cpu kernel: frames, height, width must be >= 1");
  TORCH_CHECK(qc.size(1) == frames * height * width, "ditflow_fast cpu kernel: N=", qc.size(1),
              " != frames*height*width=", frames * height * width);
}

// Row reductions of one forward score tile and the backward's logit-gradient pass: the only loops
// of ours over N^2 elements. For float they are multi-ISA (AMF_TARGET_CLONES, with their bodies inlined
// into each clone: AMF_INLINE), so the vectorised exp of amf_reduce.h runs 16 wide where the CPU allows.
template <typename T>
AMF_INLINE void reduce_tile_impl(const TileArgs<T>& a, bool soft) {
  for (int64_t r = 0; r < a.rows; ++r) {
    for (int64_t jj = 0; jj < a.groups; ++jj) {
      const int64_t out = a.out0 + r * a.frames + jj;
      const T* row = a.s + r * a.ld + jj * a.hw;
      if (soft) {
        SoftState<T> st = soft_init<T>();
        soft_block(st, row, a.alpha, a.px, a.py, static_cast<int>(a.hw));
        const SoftResult<T> res = soft_finish(st);
        a.tgt[2 * out] = res.ox;
        a.tgt[2 * out + 1] = res.oy;
        a.lse[out] = res.lse;
      } else {
        ArgmaxState<T> st = argmax_init<T>();
        argmax_block(st, row, 0, static_cast<int>(a.hw));
        a.tgt[2 * out] = a.px[st.index];
        a.tgt[2 * out + 1] = a.py[st.index];
      }
    }
  }
}

AMF_TARGET_CLONES void reduce_tile_f32(const TileArgs<float>& a, bool soft) { reduce_tile_impl(a, soft); }

}  // namespace

void reduce_tile(const TileArgs<float>& a, bool soft) { reduce_tile_f32(a, soft); }
void reduce_tile(const TileArgs<double>& a, bool soft) { reduce_tile_impl(a, soft); }

namespace {

template <typename T>
struct DzArgs {
  const T* src;     // scores of a row chunk against all keys, row pitch n (recomputed or kept)
  T* s;             // dz of the chunk, row pitch n (may be src itself: then computed in place)
  int64_t n, hw, frames;
  int64_t at0;      // [B, N, F] flat index of the chunk's first row, frame 0
  T alpha;
  const T *px, *py, *tgt, *lse, *g;
};

// items = (row, frame) pairs of the chunk: dz = p * (<g, pos(n)> - <g, o>), p = exp(z - lse), into
// out (row pitch n): dz itself, or (Out = uint16_t) the bf16 bits of alpha * dz, the bf16 backward's operand.
template <typename T, typename Out>
AMF_INLINE void logit_grads_impl(const DzArgs<T>& a, Out* out, int64_t begin, int64_t end) {
  for (int64_t item = begin; item < end; ++item) {
    const int64_t r = item / a.frames, j = item % a.frames;
    const int64_t at = a.at0 + item;
    const T gx = a.g[2 * at], gy = a.g[2 * at + 1];
    const T g_dot_o = gx * a.tgt[2 * at] + gy * a.tgt[2 * at + 1];
    const T l = a.lse[at];
    const T* in = a.src + r * a.n + j * a.hw;
    Out* row = out + r * a.n + j * a.hw;
    const T *px = a.px, *py = a.py;
    const T alpha = a.alpha;
    AMF_SIMD
    for (int64_t c = 0; c < a.hw; ++c) {
      const T dz = soft_logit_grad(alpha * in[c], l, gx, gy, px[c], py[c], g_dot_o);
      if constexpr (std::is_same_v<Out, uint16_t>)
        row[c] = float_to_bf16_bits(alpha * dz);
      else
        row[c] = dz;
    }
  }
}

AMF_TARGET_CLONES void logit_grads_f32(const DzArgs<float>& a, int64_t begin, int64_t end) {
  logit_grads_impl(a, a.s, begin, end);
}
AMF_TARGET_CLONES void logit_grads_bf16(const DzArgs<float>& a, uint16_t* out, int64_t begin, int64_t end) {
  logit_grads_impl(a, out, begin, end);
}
void logit_grads(const DzArgs<float>& a, int64_t begin, int64_t end) { logit_grads_f32(a, begin, end); }
void logit_grads(const DzArgs<double>& a, int64_t begin, int64_t end) { logit_grads_impl(a, a.s, begin, end); }

// `cols` rounded up to a multiple of 8 where the `n` keys allow, else `cols` (see forward_impl's tile width).
inline int64_t padded_width(int64_t cols, int64_t n) {
  const int64_t padded = ceil_div(cols, 8) * 8;
  return padded <= n ? padded : cols;
}

template <typename T>
void forward_impl(const at::Tensor& qc, const at::Tensor& kc, int64_t frames, int64_t hw, const std::vector<T>& px,
                  const std::vector<T>& py, T alpha, bool soft, at::Tensor& target, at::Tensor& lse,
                  const at::Tensor& keep) {
  const bool bf16 = qc.scalar_type() == at::kBFloat16;  // then T is float: amf_cpu_bf16.h's tiles
  if constexpr (std::is_same_v<T, float>) {
    if (!soft && !keep.defined() && argmax_screen_enabled()) {
      argmax_forward_screened(qc, kc, frames, hw, px.data(), py.data(), target.data_ptr<float>());
      return;
    }
  }
  const int64_t batch = qc.size(0), n = qc.size(1), d = qc.size(2);
  // amf_cpu_tiling.h's L2 cut was measured where MKL runs its AVX2 code (AMD). With oneDNN's tiles (Zen 5,
  // cogvideox-5b-f6 soft, paired) the tall tiles ran 0.418x to 0.429x of the GEMM in four runs, the cut ones 0.429x
  // to 0.464x (docs/runs/onednn_gemm/); with MKL's AVX-512 code (Intel Xeon, 2 MiB L2, session 20) 1.015x twice
  // against 1.047x and 1.054x (docs/runs/intel_xeon_s20/).
  // The kernel's own bf16 tiles keep the cut.
  const bool onednn = std::is_same_v<T, float> && !bf16 && onednn_gemm_enabled();
  const Plan plan = forward_plan(batch, n, frames, hw, sizeof(T), soft && (bf16 || (!onednn && !cpu_is_intel())));
  const PackedKeys keys = bf16 ? pack_keys(kc.data_ptr<c10::BFloat16>(), batch, n, d, hw) : PackedKeys{};
  T* tgt = target.data_ptr<T>();
  T* lse_ptr = soft ? lse.data_ptr<T>() : nullptr;
  // Work items run key-group-major and the threads take them in turn, so at any time all threads
  // multiply the same key group, which can stay in L3 for all its query tiles (at N = 8,100 the keys
  // are 100 MB in all, 16.6 MB a frame). Timed only together with the L2-sized tiles.
  const int64_t groups = ceil_div(frames, plan.group), tiles = batch * plan.tiles_per_batch;
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), tiles);
  // MKL's float32 GEMM ran a tile 1,350 keys wide (a CogVideoX 480x720 frame) at 62 GFLOP/s on one Zen 3 core, and
  // 1,352 wide at 78 (docs/runs/zen3_goals): where a tile's width is not a multiple of 8, the GEMM takes that many
  // columns, the extra ones the next frame's keys (the previous one's at the end), which the reduction skips.
  // Not with kept scores (those tiles are views of the [N, N] scores), nor with DITFLOW_FAST_CPU_PAD=0.
  const char* pad_knob = std::getenv("DITFLOW_FAST_CPU_PAD");
  const bool pad = !keep.defined() && !bf16 && !(pad_knob && std::string_view(pad_knob) == "0");
  const int64_t tile_len = plan.rows * (plan.group * hw + (pad ? 7 : 0));
  const at::Tensor tiles_buf =
      keep.defined() ? at::Tensor() : scratch(Slot::kTiles, {threads * tile_len}, target.scalar_type());
  T* tiles_ptr = keep.defined() ? nullptr : tiles_buf.data_ptr<T>();
  // Each thread takes the next work item when it is done with its last (not a fixed share): on a shared
  // machine one core can run slower for a while, and a fixed share left the other waiting at the end.
  // DITFLOW_FAST_CPU_STATIC=1 restores the fixed share (item i to thread i mod threads), for comparison.
  std::atomic<int64_t> next{0};
  const char* knob = std::getenv("DITFLOW_FAST_CPU_STATIC");
  const bool fixed = knob && std::string_view(knob) == "1";
  const int64_t items = groups * tiles;
  at::parallel_for(0, threads, 1, [&](int64_t first, int64_t last) {
    // made in this thread: OpenMP workers do not inherit the caller's inference mode, and mm_out refuses to
    // write a view made under it (torch.inference_mode callers) from outside it
    const at::Tensor tile = keep.defined() ? at::Tensor() : at::from_blob(tiles_ptr + first * tile_len, {tile_len},
                                                                          target.options());
    std::vector<uint32_t> packed_rows;
    const auto work = [&](int64_t item) {
      const int64_t j0 = (item / tiles) * plan.group, b = (item % tiles) / plan.tiles_per_batch;
      const int64_t r0 = (item % plan.tiles_per_batch) * plan.rows;
      const int64_t nr = std::min(plan.rows, n - r0), g = std::min(plan.group, frames - j0);
      if (nr <= 0) return;
      // the GEMM's columns: this item's g frames, widened to `cols` within the batch element's keys
      const int64_t cols = pad ? padded_width(g * hw, n) : g * hw;
      const int64_t first_col = std::min(j0 * hw, n - cols), skip = j0 * hw - first_col;
      // with `keep` the tile is written where the backward will find it, instead of the scratch buffer
      at::Tensor s = keep.defined() ? keep[b].narrow(0, r0, nr).narrow(1, j0 * hw, g * hw)
                                    : tile.narrow(0, 0, nr * cols).view({nr, cols});
      if (bf16)
        bf16_scores(qc.data_ptr<c10::BFloat16>() + (b * n + r0) * d, nr, d, keys, b, j0, g, s.data_ptr<float>(),
                    s.stride(0), packed_rows);
      else
        gemm_out(s, qc[b].narrow(0, r0, nr), kc[b].narrow(0, first_col, cols).t());
      const TileArgs<T> args{s.data_ptr<T>() + skip, s.stride(0), nr,    g,           hw,  frames,
                             (b * n + r0) * frames + j0,           alpha, px.data(), py.data(), tgt, lse_ptr};
      reduce_tile(args, soft);
    };
    if (fixed) {
      for (int64_t th = first; th < last; ++th)
        for (int64_t item = th; item < items; item += threads) work(item);
    } else {
      for (int64_t item = next.fetch_add(1); item < items; item = next.fetch_add(1)) work(item);
    }
  });
}

// Backward, by chunks of query rows against all keys. Unlike the forward, every step here is a
// large GEMM (recompute S = Q_r K^T, then dQ_r = alpha * dz @ K and dK += alpha * dz^T @ Q_r), so
// each runs on all threads inside MKL or oneDNN (amf_cpu_gemm.h) at full efficiency, and only the
// logit-gradient pass between them (amf_reduce.h: dz = p * (<g, pos(n)> - <g, o>), p recomputed from
// the stored lse) is ours, parallel over rows. The R x N chunk buffer is bounded by kBackwardChunkBytes,
// not by N^2; the chunks run in a fixed order, so the dK accumulation is deterministic.
constexpr int64_t kBackwardChunkBytes = int64_t(64) << 20;

// Query rows per backward chunk: as many rows of row_bytes as the budget holds (or the knob), 1 to n.
int64_t backward_rows(int64_t n, int64_t row_bytes) {
  return std::clamp<int64_t>(env_int("DITFLOW_FAST_CPU_BWD_ROWS", kBackwardChunkBytes / row_bytes), 1, n);
}

template <typename T>
void backward_impl(const at::Tensor& qc, const at::Tensor& kc, const at::Tensor& target, const at::Tensor& lse,
                   const at::Tensor& grad, int64_t frames, int64_t hw, const std::vector<T>& px,
                   const std::vector<T>& py, T alpha, const at::Tensor& scores, at::Tensor& dq, at::Tensor& dk) {
  const int64_t batch = qc.size(0), n = qc.size(1);
  const int64_t rows = backward_rows(n, n * sizeof(T));
  const bool want_q = dq.defined(), want_k = dk.defined();
  at::Tensor buf = scratch(Slot::kChunk, {rows * n}, qc.scalar_type());
  const T* tgt = target.data_ptr<T>();
  const T* lse_ptr = lse.data_ptr<T>();
  const T* g = grad.data_ptr<T>();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t r0 = 0; r0 < n; r0 += rows) {
      const int64_t nr = std::min(rows, n - r0);
      const at::Tensor q_r = qc[b].narrow(0, r0, nr);
      at::Tensor s = buf.narrow(0, 0, nr * n).view({nr, n});
      T* sp = s.data_ptr<T>();
      const T* src = sp;
      if (scores.defined()) {
        src = scores.data_ptr<T>() + (b * n + r0) * n;  // the forward's scores: no recompute
      } else {
        gemm_out(s, q_r, kc[b].t());
      }
      at::parallel_for(0, nr * frames, 16, [&](int64_t begin, int64_t end) {
        const DzArgs<T> args{src, sp, n, hw, frames, (b * n + r0) * frames, alpha, px.data(), py.data(), tgt, lse_ptr, g};
        logit_grads(args, begin, end);
      });
      // beta = 0: dq starts uninitialised and each row chunk is written exactly once
      if (want_q) gemm_out(dq[b].narrow(0, r0, nr), s, kc[b], 0.0, alpha);
      if (want_k) gemm_out(dk[b], s.t(), q_r, r0 == 0 ? 0.0 : 1.0, alpha);  // the first chunk initialises dk
    }
  }
}

// bf16 inputs where the CPU multiplies bf16: the two gradient GEMMs run in bf16 (oneDNN; AMX where
// present) at about twice the float32 rate, as flash attention's backward does: dz stays float32
// until the pass that forms it rounds alpha * dz to bf16, and the GEMMs accumulate in float32. dQ
// takes each key frame's keys less their mean: dz sums to zero over a frame (a softmax's gradient), so
// dQ = dz @ (K - c_j) for any per-frame c_j, and then the rounding errors of dz multiply the keys'
// spread instead of their mean. Measured on keys of one frame correlated 0.99, dQ's relative error
// was 1.2e-2 uncentred and 2.8e-3 centred, against 1.7e-3 for float32 GEMMs (the bf16 output's own
// rounding; docs/native.md, "The bf16 soft backward"). dK has no such sum. Recomputed scores come
// from amf_cpu_bf16.h's float32-output tiles.
void backward_bf16(const at::Tensor& qc, const at::Tensor& kc, const at::Tensor& target, const at::Tensor& lse,
                   const at::Tensor& grad, int64_t frames, int64_t hw, const std::vector<float>& px,
                   const std::vector<float>& py, float alpha, const at::Tensor& scores, at::Tensor& dq,
                   at::Tensor& dk) {
  const int64_t batch = qc.size(0), n = qc.size(1), d = qc.size(2);
  // the chunk's bf16 dz within the budget, and its recomputed float32 scores too when none were kept
  const int64_t rows = backward_rows(n, n * (sizeof(c10::BFloat16) + (scores.defined() ? 0 : sizeof(float))));
  const bool want_q = dq.defined(), want_k = dk.defined();
  const at::Tensor buf = scores.defined() ? at::Tensor() : scratch(Slot::kChunk, {rows * n}, at::kFloat);
  at::Tensor dzb = scratch(Slot::kDzBf16, {rows * n}, at::kBFloat16);
  const at::Tensor centred = want_q ? centre_keys(kc, hw) : at::Tensor();
  const PackedKeys keys =
      scores.defined() ? PackedKeys{} : pack_keys(kc.const_data_ptr<c10::BFloat16>(), batch, n, d, hw);
  // several row chunks add up dK: in float32, rounded to bf16 once at the end
  at::Tensor dk32 = want_k && rows < n ? at::empty({n, d}, qc.options().dtype(at::kFloat)) : at::Tensor();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t r0 = 0; r0 < n; r0 += rows) {
      const int64_t nr = std::min(rows, n - r0);
      const at::Tensor q_r = qc[b].narrow(0, r0, nr);
      const float* src;
      if (scores.defined()) {
        src = scores.const_data_ptr<float>() + (b * n + r0) * n;
      } else {
        bf16_score_rows(q_r.const_data_ptr<c10::BFloat16>(), nr, d, keys, b, buf.mutable_data_ptr<float>());
        src = buf.const_data_ptr<float>();
      }
      auto* dz_bits = reinterpret_cast<uint16_t*>(dzb.mutable_data_ptr<c10::BFloat16>());
      at::parallel_for(0, nr * frames, 16, [&](int64_t begin, int64_t end) {
        const DzArgs<float> args{src, nullptr, n, hw, frames, (b * n + r0) * frames, alpha, px.data(), py.data(),
                                 target.const_data_ptr<float>(), lse.const_data_ptr<float>(),
                                 grad.const_data_ptr<float>()};
        logit_grads_bf16(args, dz_bits, begin, end);
      });
      const at::Tensor dz = dzb.narrow(0, 0, nr * n).view({nr, n});
      if (want_q) {
        at::Tensor out = dq[b].narrow(0, r0, nr);
        at::mm_out(out, dz, centred[b]);
      }
      if (!want_k) continue;
      if (dk32.defined()) {
        const at::Tensor part = at::mm(dz.t(), q_r);
        r0 == 0 ? dk32.copy_(part) : dk32.add_(part);
      } else {
        at::Tensor out = dk[b];
        at::mm_out(out, dz.t(), q_r);
      }
    }
    if (dk32.defined()) dk[b].copy_(dk32);
  }
}

}  // namespace

namespace {

// Both forward ops: (target, lse, scores), scores [B, N, N] only when keep_scores (else undefined).
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_entry(const at::Tensor& qc_in, const at::Tensor& kc_in,
                                                             int64_t frames, int64_t height, int64_t width,
                                                             double alpha, bool soft, bool keep_scores) {
  check_inputs(qc_in, kc_in, frames, height, width);
  // The op has no autograd formula of its own (the Python autograd.Function supplies the backward),
  // so the ATen calls inside run without recording a graph whatever the inputs' requires_grad.
  const at::NoGradGuard no_grad;
  at::Tensor qc = qc_in.detach().contiguous(), kc = kc_in.detach().contiguous();
  // bf16 stays bf16 where the CPU has AVX512-BF16: the soft forward's own tiles, the argmax's screen (whose
  // GEMM is ATen's, on AMX where present), else float32
  if (qc.scalar_type() == at::kBFloat16 && !bf16_gemm_enabled()) {
    qc = qc.to(at::kFloat);
    kc = kc.to(at::kFloat);
  }
  const auto opts = qc.options().dtype(qc.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  const int64_t batch = qc.size(0), n = qc.size(1), hw = height * width;
  at::Tensor target = at::empty({batch, n, frames, 2}, opts);
  at::Tensor lse = soft ? at::empty({batch, n, frames}, opts) : at::empty({0}, opts);
  // in a slot: the backward lets go of them, and the next call finds their pages faulted in (amf_cpu_scratch.h)
  at::Tensor keep = keep_scores ? scratch(Slot::kScores, {batch, n, n}, opts.dtype().toScalarType()) : at::Tensor();
  if (n == 0 || batch == 0) return {target, lse, keep};
  AT_DISPATCH_FLOATING_TYPES(opts.dtype().toScalarType(), "amf_forward_cpu", [&] {
    std::vector<scalar_t> px, py;
    coords(height, width, px, py);
    forward_impl<scalar_t>(qc, kc, frames, hw, px, py, static_cast<scalar_t>(alpha), soft, target, lse, keep);
  });
  return {target, lse, keep};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> amf_forward_cpu(const at::Tensor& qc, const at::Tensor& kc, int64_t frames,
                                                   int64_t height, int64_t width, double alpha, bool soft) {
  auto [target, lse, unused] = forward_entry(qc, kc, frames, height, width, alpha, soft, false);
  return {target, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> amf_forward_scores_cpu(const at::Tensor& qc, const at::Tensor& kc,
                                                                      int64_t frames, int64_t height, int64_t width,
                                                                      double alpha) {
  return forward_entry(qc, kc, frames, height, width, alpha, true, true);
}

std::tuple<at::Tensor, at::Tensor> amf_backward_cpu(const at::Tensor& qc_in, const at::Tensor& kc_in,
                                                    const at::Tensor& target_in, const at::Tensor& lse_in,
                                                    const at::Tensor& grad_in, int64_t frames, int64_t height,
                                                    int64_t width, double alpha, bool need_dq, bool need_dk,
                                                    const std::optional<at::Tensor>& scores_in, bool transposed) {
  check_inputs(qc_in, kc_in, frames, height, width);
  const at::NoGradGuard no_grad;
  // bf16 inputs: bf16 GEMMs where the CPU multiplies bf16 (backward_bf16), else float32 ones on upcast copies
  const bool bf16 = qc_in.scalar_type() == at::kBFloat16 && bf16_gemm_enabled();
  const auto up = [bf16](const at::Tensor& t) {
    return t.scalar_type() == at::kBFloat16 && !bf16 ? t.to(at::kFloat) : t;
  };
  const at::Tensor qc = up(qc_in.detach()).contiguous(), kc = up(kc_in.detach()).contiguous();
  const int64_t batch = qc.size(0), n = qc.size(1);
  const std::vector<int64_t> per_frame2{batch, n, frames, 2};
  TORCH_CHECK(target_in.sizes() == per_frame2 && grad_in.sizes() == per_frame2,
              "ditflow_fast cpu backward: target and grad must be [B, N, F, 2]");
  TORCH_CHECK(lse_in.sizes() == std::vector<int64_t>({batch, n, frames}),
              "ditflow_fast cpu backward: lse must be [B, N, F]");
  const auto opts = qc.options().dtype(bf16 ? at::kFloat : qc.scalar_type());  // of target, lse, grad, scores
  const at::Tensor target = target_in.detach().to(opts).contiguous();
  const at::Tensor lse = lse_in.detach().to(opts).contiguous();
  const at::Tensor grad = grad_in.detach().to(opts).contiguous();
  at::Tensor scores;
  if (scores_in.has_value() && scores_in->defined()) {
    TORCH_CHECK(scores_in->sizes() == std::vector<int64_t>({batch, n, n}) && scores_in->scalar_type() == opts.dtype(),
                "ditflow_fast cpu backward: scores must be the forward's [B, N, N] (float32 for bf16 qc)");
    scores = scores_in->detach().contiguous();
  }
  // Transposed, addmm_ writes each gradient as [D, N] rows (it swaps the operands for a column-major result):
  // at cpu-5b both GEMMs then ran 4 to 10% faster than into [N, D] rows, more than the per-head transposing
  // copy this costs a caller that re-lays them out as [B, H, T, d] (docs/runs/transposed_grads).
  // From scratch slots: the caller re-lays them out and lets go, so the next call finds its pages faulted in.
  const auto grad_buffer = [&](const at::Tensor& like, Slot slot) {
    const int64_t d = like.size(2);
    if (!transposed || bf16) return scratch(slot, {batch, n, d}, like.scalar_type());
    return scratch(slot, {batch, d, n}, like.scalar_type()).transpose(1, 2);
  };
  at::Tensor dq = need_dq ? grad_buffer(qc, Slot::kDq) : at::Tensor();
  at::Tensor dk = need_dk ? grad_buffer(kc, Slot::kDk) : at::Tensor();  // written by the first row chunk
  if (n > 0 && batch > 0 && (need_dq || need_dk) && bf16) {
    std::vector<float> px, py;
    coords(height, width, px, py);
    backward_bf16(qc, kc, target, lse, grad, frames, height * width, px, py, static_cast<float>(alpha), scores, dq, dk);
  } else if (n > 0 && batch > 0 && (need_dq || need_dk)) {
    AT_DISPATCH_FLOATING_TYPES(qc.scalar_type(), "amf_backward_cpu", [&] {
      std::vector<scalar_t> px, py;
      coords(height, width, px, py);
      backward_impl<scalar_t>(qc, kc, target, lse, grad, frames, height * width, px, py, static_cast<scalar_t>(alpha),
                              scores, dq, dk);
    });
  }
  return {need_dq ? dq : at::empty({0}, opts), need_dk ? dk : at::empty({0}, opts)};
}

}  // namespace ditflow_fast
