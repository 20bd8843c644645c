// Tests of csrc/amf_reduce.h on the host: the same steps the CUDA epilogue runs.
// Built and run by ctest (CMakeLists.txt); exits non-zero on the first failed check.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "amf_reduce.h"

using namespace ditflow_fast;

static int g_failures = 0;

#define CHECK(cond, ...)                                             \
  do {                                                               \
    if (!(cond)) {                                                   \
      std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);      \
      std::fprintf(stderr, __VA_ARGS__);                             \
      std::fprintf(stderr, "\n");                                    \
      ++g_failures;                                                  \
    }                                                                \
  } while (0)

// argmax: scores drawn from a handful of values so ties are common; keys visited in a random order
// and split into partial states merged in a random order must still give the lowest index of the max.
static void test_argmax(std::mt19937& rng) {
  for (int trial = 0; trial < 200; ++trial) {
    const int n = 1 + static_cast<int>(rng() % 97);
    std::vector<float> score(n);
    for (auto& v : score) v = static_cast<float>(static_cast<int>(rng() % 5)) - 2.0f;
    int expect = 0;
    for (int i = 1; i < n; ++i)
      if (score[i] > score[expect]) expect = i;

    ArgmaxState<float> seq = argmax_init<float>();
    for (int i = 0; i < n; ++i) argmax_step(seq, score[i], i);
    CHECK(seq.index == expect, "sequential argmax %d != %d (n=%d)", seq.index, expect, n);

    std::vector<int> order(n);
    for (int i = 0; i < n; ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng);
    const int parts = 1 + static_cast<int>(rng() % 4);
    std::vector<ArgmaxState<float>> partial(parts, argmax_init<float>());
    for (int i = 0; i < n; ++i) argmax_step(partial[i % parts], score[order[i]], order[i]);
    ArgmaxState<float> merged = argmax_init<float>();
    for (int p = parts - 1; p >= 0; --p) argmax_merge(merged, partial[p]);
    CHECK(merged.index == expect, "merged argmax %d != %d (n=%d, parts=%d)", merged.index, expect, n, parts);
    CHECK(merged.best == score[expect], "merged best value wrong");

    // The block form over uneven chunks, chunks visited last to first.
    ArgmaxState<float> blk = argmax_init<float>();
    std::vector<int> starts;
    for (int i0 = 0; i0 < n; i0 += 1 + static_cast<int>(rng() % 9)) starts.push_back(i0);
    for (size_t c = starts.size(); c-- > 0;) {
      const int end = c + 1 < starts.size() ? starts[c + 1] : n;
      argmax_block(blk, score.data() + starts[c], starts[c], end - starts[c]);
    }
    CHECK(blk.index == expect, "block argmax %d != %d (n=%d)", blk.index, expect, n);
  }
  ArgmaxState<float> empty = argmax_init<float>(), other = argmax_init<float>();
  argmax_merge(empty, other);
  CHECK(empty.index == -1, "merging two empty states must stay empty");
}

struct Direct {
  double ox, oy, lse;
};

// The definition in double: softmax over the keys, expected position, log-sum-exp.
static Direct direct_soft(const std::vector<double>& z, const std::vector<double>& x, const std::vector<double>& y) {
  double m = -HUGE_VAL;
  for (double v : z) m = v > m ? v : m;
  double l = 0, sx = 0, sy = 0;
  for (size_t i = 0; i < z.size(); ++i) {
    const double e = std::exp(z[i] - m);
    l += e;
    sx += e * x[i];
    sy += e * y[i];
  }
  return {sx / l, sy / l, m + std::log(l)};
}

static bool close(double a, double b, double tol) { return std::fabs(a - b) <= tol * (1.0 + std::fabs(b)); }

// soft: element steps, blocks and merges of partial states agree with the direct formula, including
// logits large enough that a naive exp would overflow.
template <typename T>
static void test_soft(std::mt19937& rng, double tol) {
  std::normal_distribution<double> normal(0.0, 1.0);
  for (int trial = 0; trial < 200; ++trial) {
    const int w = 1 + static_cast<int>(rng() % 13), h = 1 + static_cast<int>(rng() % 11), n = w * h;
    const double spread = (trial % 4 == 0) ? 300.0 : 4.0;
    const double offset = (trial % 3 == 0) ? 500.0 : 0.0;
    std::vector<double> z(n), xd(n), yd(n);
    std::vector<T> zt(n), xt(n), yt(n);
    for (int i = 0; i < n; ++i) {
      zt[i] = static_cast<T>(offset + spread * normal(rng));
      xt[i] = static_cast<T>(i % w);
      yt[i] = static_cast<T>(i / w);
      z[i] = zt[i];
      xd[i] = xt[i];
      yd[i] = yt[i];
    }
    const Direct ref = direct_soft(z, xd, yd);

    SoftState<T> seq = soft_init<T>();
    for (int i = 0; i < n; ++i) soft_step(seq, zt[i], xt[i], yt[i]);
    SoftResult<T> r = soft_finish(seq);
    CHECK(close(r.ox, ref.ox, tol) && close(r.oy, ref.oy, tol) && close(r.lse, ref.lse, tol),
          "soft_step: (%g, %g, %g) vs (%g, %g, %g)", double(r.ox), double(r.oy), double(r.lse), ref.ox, ref.oy,
          ref.lse);

    // The block form over uneven chunks, scale folded in (score * 0.5 with doubled logits).
    std::vector<T> doubled(n);
    for (int i = 0; i < n; ++i) doubled[i] = zt[i] * T(2);
    SoftState<T> blk = soft_init<T>();
    for (int i0 = 0; i0 < n;) {
      const int len = 1 + static_cast<int>(rng() % 7);
      const int cnt = i0 + len > n ? n - i0 : len;
      soft_block(blk, doubled.data() + i0, T(0.5), xt.data() + i0, yt.data() + i0, cnt);
      i0 += cnt;
    }
    r = soft_finish(blk);
    CHECK(close(r.ox, ref.ox, tol) && close(r.oy, ref.oy, tol) && close(r.lse, ref.lse, tol),
          "soft_block: (%g, %g, %g) vs (%g, %g, %g)", double(r.ox), double(r.oy), double(r.lse), ref.ox, ref.oy,
          ref.lse);

    // Interleaved partial states (as warp lanes hold them), merged in reverse order, some empty.
    const int parts = 1 + static_cast<int>(rng() % 8);
    std::vector<SoftState<T>> partial(parts, soft_init<T>());
    for (int i = 0; i < n; ++i) soft_step(partial[i % parts], zt[i], xt[i], yt[i]);
    SoftState<T> merged = soft_init<T>();
    for (int p = parts - 1; p >= 0; --p) soft_merge(merged, partial[p]);
    r = soft_finish(merged);
    CHECK(close(r.ox, ref.ox, tol) && close(r.oy, ref.oy, tol) && close(r.lse, ref.lse, tol),
          "soft_merge (%d parts): (%g, %g, %g) vs (%g, %g, %g)", parts, double(r.ox), double(r.oy), double(r.lse),
          ref.ox, ref.oy, ref.lse);
  }
}

// backward: sum_n dz[n] must equal the directional derivative of <g, o> along a random direction of z
// (central differences in double), and the logit gradients must sum to zero (softmax invariance).
static void test_logit_grad(std::mt19937& rng) {
  std::normal_distribution<double> normal(0.0, 1.0);
  for (int trial = 0; trial < 50; ++trial) {
    const int w = 2 + static_cast<int>(rng() % 6), h = 1 + static_cast<int>(rng() % 5), n = w * h;
    std::vector<double> z(n), x(n), y(n), dir(n);
    for (int i = 0; i < n; ++i) {
      z[i] = 2.0 * normal(rng);
      x[i] = i % w;
      y[i] = i / w;
      dir[i] = normal(rng);
    }
    const double gx = normal(rng), gy = normal(rng);
    const Direct base = direct_soft(z, x, y);
    const double g_dot_o = gx * base.ox + gy * base.oy;
    double analytic = 0, total = 0;
    for (int i = 0; i < n; ++i) {
      const double dz = soft_logit_grad(z[i], base.lse, gx, gy, x[i], y[i], g_dot_o);
      analytic += dz * dir[i];
      total += dz;
    }
    const double eps = 1e-6;
    std::vector<double> zp(z), zm(z);
    for (int i = 0; i < n; ++i) {
      zp[i] += eps * dir[i];
      zm[i] -= eps * dir[i];
    }
    const Direct p = direct_soft(zp, x, y), m = direct_soft(zm, x, y);
    const double numeric = (gx * (p.ox - m.ox) + gy * (p.oy - m.oy)) / (2 * eps);
    CHECK(std::fabs(analytic - numeric) <= 1e-6 * (1 + std::fabs(numeric)), "logit grad %g vs numeric %g", analytic,
          numeric);
    CHECK(std::fabs(total) <= 1e-9 * n * (1 + std::fabs(gx) + std::fabs(gy)) * (w + h), "logit grads sum to %g",
          total);
  }
}

// The host's branch-free exp against double exp: a few ulp over the range, 0 below it, inf above.
static void test_exp_poly() {
  double worst = 0;
  for (double xd = -87.0; xd <= 88.0; xd += 3.7e-4) {
    const float x = static_cast<float>(xd);
    const double ref = std::exp(static_cast<double>(x));
    const double err = std::fabs(amf_exp_poly(x) - ref) / ref;
    worst = err > worst ? err : worst;
  }
  CHECK(worst < 4 * 5.97e-8, "amf_exp_poly: max relative error %g over [-87, 88]", worst);
  CHECK(amf_exp_poly(0.0f) == 1.0f, "exp(0) must be exactly 1");
  CHECK(amf_exp_poly(-100.0f) == 0.0f && amf_exp_poly(-1e4f) == 0.0f && amf_exp_poly(-1e30f) == 0.0f,
        "exp of very negative arguments must flush to 0");
  CHECK(std::isinf(amf_exp_poly(89.0f)), "exp(89) must overflow to inf");
}

int main() {
  std::mt19937 rng(20261124u);
  test_exp_poly();
  test_argmax(rng);
  test_soft<double>(rng, 1e-12);
  test_soft<float>(rng, 2e-5);
  test_logit_grad(rng);
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return EXIT_FAILURE;
  }
  std::printf("amf_reduce.h: all checks passed\n");
  return EXIT_SUCCESS;
}
