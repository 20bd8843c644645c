// Fused CPU kernels of the Attention Motion Flow: one pass over the scores, tile by tile.
//
// Work is blocked over (query tile of R rows) x (key frame j). Each score tile S = Q_tile @ K_j^T
// (R x h*w) comes from ATen's GEMM (MKL/oneDNN, single-threaded inside our parallel region) into a
// per-thread buffer sized to stay in L2, and is reduced by the steps of amf_reduce.h while it is
// still in cache. Extra memory: one R x h*w tile per thread (backward: plus one h*w x D key-frame
// gradient accumulator per thread), never N x N.
#include "amf_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <vector>

#include "amf_reduce.h"

namespace ditflow_fast {
namespace {

constexpr int64_t kTileBytes = 256 * 1024;  // score tile budget: a quarter of one core's L2 here

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Query rows per tile: the R x hw tile fits kTileBytes, R is at least 16 (GEMM efficiency) and at
// most max_rows, and there are enough tiles to give every thread several.
int64_t tile_rows(int64_t total_rows, int64_t hw, int64_t elem, int64_t max_rows) {
  int64_t r = std::clamp<int64_t>(kTileBytes / (hw * elem), 16, max_rows);
  const int64_t spread = ceil_div(total_rows, 4 * static_cast<int64_t>(at::get_num_threads()));
  r = std::min(r, std::max<int64_t>(16, ceil_div(spread, 8) * 8));
  return std::max<int64_t>(1, std::min(r, total_rows));
}

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
                  (qc.scalar_type() == at::kFloat || qc.scalar_type() == at::kDouble),
              "ditflow_fast cpu kernel: qc and kc must both be float32 or float64");
  TORCH_CHECK(frames >= 1 && height >= 1 && width >= 1, "ditflow_fast cpu kernel: frames, height, width must be >= 1");
  TORCH_CHECK(qc.size(1) == frames * height * width, "ditflow_fast cpu kernel: N=", qc.size(1),
              " != frames*height*width=", frames * height * width);
}

template <typename T>
void forward_impl(const at::Tensor& qc, const at::Tensor& kc, int64_t frames, int64_t hw, const std::vector<T>& px,
                  const std::vector<T>& py, T alpha, bool soft, at::Tensor& target, at::Tensor& lse) {
  const int64_t batch = qc.size(0), n = qc.size(1);
  const int64_t rows = tile_rows(batch * n, hw, sizeof(T), 256);
  const int64_t tiles_per_batch = ceil_div(n, rows);
  T* tgt = target.data_ptr<T>();
  T* lse_ptr = soft ? lse.data_ptr<T>() : nullptr;
  at::parallel_for(0, batch * tiles_per_batch, 1, [&](int64_t begin, int64_t end) {
    at::Tensor tile = at::empty({rows, hw}, qc.options());
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / tiles_per_batch;
      const int64_t r0 = (item % tiles_per_batch) * rows;
      const int64_t nr = std::min(rows, n - r0);
      const at::Tensor q_tile = qc[b].narrow(0, r0, nr);
      at::Tensor s = tile.narrow(0, 0, nr);
      for (int64_t j = 0; j < frames; ++j) {
        at::mm_out(s, q_tile, kc[b].narrow(0, j * hw, hw).t());
        const T* sp = s.data_ptr<T>();
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t out = (b * n + r0 + r) * frames + j;  // [B, N, F] flat index
          const T* row = sp + r * hw;
          if (soft) {
            SoftState<T> st = soft_init<T>();
            soft_block(st, row, alpha, px.data(), py.data(), static_cast<int>(hw));
            const SoftResult<T> res = soft_finish(st);
            tgt[2 * out] = res.ox;
            tgt[2 * out + 1] = res.oy;
            lse_ptr[out] = res.lse;
          } else {
            ArgmaxState<T> st = argmax_init<T>();
            argmax_block(st, row, 0, static_cast<int>(hw));
            tgt[2 * out] = px[st.index];
            tgt[2 * out + 1] = py[st.index];
          }
        }
      }
    }
  });
}

// Backward, key frame by key frame: for frame j every query tile recomputes its probabilities
// against K_j, turns them into logit gradients in place, adds alpha * dz @ K_j to its own rows of dQ
// (no other tile writes them) and alpha * dz^T @ Q_tile to its thread's accumulator for dK_j. The
// accumulators are summed into dK_j after the frame, in thread order: the result does not depend on
// timing (at::parallel_for hands each thread a fixed range of tiles).
template <typename T>
void backward_impl(const at::Tensor& qc, const at::Tensor& kc, const at::Tensor& target, const at::Tensor& lse,
                   const at::Tensor& grad, int64_t frames, int64_t hw, const std::vector<T>& px,
                   const std::vector<T>& py, T alpha, at::Tensor& dq, at::Tensor& dk) {
  const int64_t batch = qc.size(0), n = qc.size(1), d = qc.size(2);
  const int64_t rows = tile_rows(n, hw, sizeof(T), 512);
  const int64_t tiles = ceil_div(n, rows);
  const int64_t threads = at::get_num_threads();
  const bool want_q = dq.defined(), want_k = dk.defined();
  at::Tensor partial = want_k ? at::zeros({threads, hw, d}, qc.options()) : at::Tensor();
  const T* tgt = target.data_ptr<T>();
  const T* lse_ptr = lse.data_ptr<T>();
  const T* g = grad.data_ptr<T>();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t j = 0; j < frames; ++j) {
      const at::Tensor k_j = kc[b].narrow(0, j * hw, hw);
      at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
        at::Tensor tile = at::empty({rows, hw}, qc.options());
        at::Tensor acc = want_k ? partial[at::get_thread_num()] : at::Tensor();
        for (int64_t t = begin; t < end; ++t) {
          const int64_t r0 = t * rows, nr = std::min(rows, n - r0);
          const at::Tensor q_tile = qc[b].narrow(0, r0, nr);
          at::Tensor s = tile.narrow(0, 0, nr);
          at::mm_out(s, q_tile, k_j.t());
          T* sp = s.data_ptr<T>();
          for (int64_t r = 0; r < nr; ++r) {
            const int64_t at_ = (b * n + r0 + r) * frames + j;
            const T gx = g[2 * at_], gy = g[2 * at_ + 1];
            const T g_dot_o = gx * tgt[2 * at_] + gy * tgt[2 * at_ + 1];
            const T l = lse_ptr[at_];
            T* row = sp + r * hw;
            for (int64_t c = 0; c < hw; ++c) row[c] = soft_logit_grad(alpha * row[c], l, gx, gy, px[c], py[c], g_dot_o);
          }
          if (want_q) dq[b].narrow(0, r0, nr).addmm_(s, k_j, 1.0, alpha);
          if (want_k) acc.addmm_(s.t(), q_tile, 1.0, alpha);
        }
      });
      if (want_k) {
        at::Tensor dk_j = dk[b].narrow(0, j * hw, hw);
        for (int64_t t = 0; t < threads; ++t) dk_j.add_(partial[t]);
        partial.zero_();
      }
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> amf_forward_cpu(const at::Tensor& qc_in, const at::Tensor& kc_in, int64_t frames,
                                                   int64_t height, int64_t width, double alpha, bool soft) {
  check_inputs(qc_in, kc_in, frames, height, width);
  // The op has no autograd formula of its own (the Python autograd.Function supplies the backward),
  // so the ATen calls inside run without recording a graph whatever the inputs' requires_grad.
  const at::NoGradGuard no_grad;
  const at::Tensor qc = qc_in.detach().contiguous(), kc = kc_in.detach().contiguous();
  const int64_t batch = qc.size(0), n = qc.size(1), hw = height * width;
  at::Tensor target = at::empty({batch, n, frames, 2}, qc.options());
  at::Tensor lse = soft ? at::empty({batch, n, frames}, qc.options()) : at::empty({0}, qc.options());
  if (n == 0 || batch == 0) return {target, lse};
  AT_DISPATCH_FLOATING_TYPES(qc.scalar_type(), "amf_forward_cpu", [&] {
    std::vector<scalar_t> px, py;
    coords(height, width, px, py);
    forward_impl<scalar_t>(qc, kc, frames, hw, px, py, static_cast<scalar_t>(alpha), soft, target, lse);
  });
  return {target, lse};
}

std::tuple<at::Tensor, at::Tensor> amf_backward_cpu(const at::Tensor& qc_in, const at::Tensor& kc_in,
                                                    const at::Tensor& target_in, const at::Tensor& lse_in,
                                                    const at::Tensor& grad_in, int64_t frames, int64_t height,
                                                    int64_t width, double alpha, bool need_dq, bool need_dk) {
  check_inputs(qc_in, kc_in, frames, height, width);
  const at::NoGradGuard no_grad;
  const at::Tensor qc = qc_in.detach().contiguous(), kc = kc_in.detach().contiguous();
  const int64_t batch = qc.size(0), n = qc.size(1);
  const std::vector<int64_t> per_frame2{batch, n, frames, 2};
  TORCH_CHECK(target_in.sizes() == per_frame2 && grad_in.sizes() == per_frame2,
              "ditflow_fast cpu backward: target and grad must be [B, N, F, 2]");
  TORCH_CHECK(lse_in.sizes() == std::vector<int64_t>({batch, n, frames}), "ditflow_fast cpu backward: lse must be [B, N, F]");
  const auto opts = qc.options();
  const at::Tensor target = target_in.detach().to(opts).contiguous();
  const at::Tensor lse = lse_in.detach().to(opts).contiguous();
  const at::Tensor grad = grad_in.detach().to(opts).contiguous();
  at::Tensor dq = need_dq ? at::zeros_like(qc) : at::Tensor();
  at::Tensor dk = need_dk ? at::zeros_like(kc) : at::Tensor();
  if (n > 0 && batch > 0 && (need_dq || need_dk)) {
    AT_DISPATCH_FLOATING_TYPES(qc.scalar_type(), "amf_backward_cpu", [&] {
      std::vector<scalar_t> px, py;
      coords(height, width, px, py);
      backward_impl<scalar_t>(qc, kc, target, lse, grad, frames, height * width, px, py, static_cast<scalar_t>(alpha),
                              dq, dk);
    });
  }
  return {need_dq ? dq : at::empty({0}, opts), need_dk ? dk : at::empty({0}, opts)};
}

}  // namespace ditflow_fast
