// How the CPU forward kernels cut their work and reduce a score tile (shared by amf_cpu.cpp and
// amf_cpu_screen.cpp).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include <unistd.h>

// Several functions per translation unit are compiled for three x86-64 levels (AVX-512, AVX2+FMA,
// baseline) and GCC picks one when the module loads (target_clones), so their loops run 16 wide
// where the CPU allows without building for one machine.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define AMF_TARGET_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define AMF_TARGET_CLONES
#endif

namespace ditflow_fast {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A positive integer from the environment (read per call, for tuning experiments), else fallback.
inline int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  return (v && *v) ? std::max<int64_t>(1, std::atoll(v)) : fallback;
}

// Query tiles of `rows` rows (every thread gets the same number of tiles when the shape allows) and,
// per GEMM, `group` consecutive key frames: as many as keep the rows x (group * hw) score tile within
// `budget`, and at least kMinGemmKeys keys whatever the budget, since a GEMM over fewer keys spends
// too much of its time packing the query tile (cpu-5b, 330 keys a frame: 660 x 330 tiles 1.09x to
// 1.16x of the whole GEMM, 660 x 1320 ones 1.02x to 1.05x).
// `fit` (the soft forward passes its core's L2, l2_bytes; 0: never): when one key frame's tile fits
// it with at least kMinFitRows rows, rows are cut to fit; otherwise tiles stay tall. Measured, the
// kernel alone against the whole GEMM, 2 threads, 1 MiB L2 (hw = keys a frame, D = H*d):
//   hw 1,350, D 3,072, 6 frames: 192 rows 0.90x, 384 rows 1.01x, 768 rows 1.17x (1,536 and 3
//     frames, or 13 frames: the same order);
//   hw 3,600, D 1,536 or 3,072: 72 rows 1.27x, 192 rows 1.18x to 1.23x, 768 rows 1.07x;
//   hw 1,560, D 1,536: 168 rows and 768 rows level.
// Why small rows win at 1,350 keys and lose at 3,600 was not profiled. Knobs: DITFLOW_FAST_CPU_ROWS
// (max query rows per tile, 768), DITFLOW_FAST_CPU_TILE_KB (both budgets), DITFLOW_FAST_CPU_MIN_KEYS.
struct Plan {
  int64_t rows, tiles_per_batch, group;
};

constexpr int64_t kMaxTileRows = 768, kMinFitRows = 192, kMinGemmKeys = 1024;

inline int64_t l2_bytes() {
  const long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
  return v > 0 ? v : int64_t(1) << 20;
}

inline Plan forward_plan(int64_t batch, int64_t n, int64_t frames, int64_t hw, int64_t elem, int64_t budget,
                         int64_t fit) {
  const int64_t threads = at::get_num_threads();
  const char* knob = std::getenv("DITFLOW_FAST_CPU_TILE_KB");
  if (knob && *knob) budget = fit = env_int("DITFLOW_FAST_CPU_TILE_KB", 1) * 1024;
  const int64_t fit_rows = fit / (hw * elem);
  const int64_t tall = fit_rows >= kMinFitRows ? std::min(kMaxTileRows, fit_rows) : kMaxTileRows;
  const int64_t max_rows = env_int("DITFLOW_FAST_CPU_ROWS", tall);
  int64_t tiles = ceil_div(n, max_rows);
  // round the total number of tiles up to a multiple of the thread count (balanced threads)
  while ((batch * tiles) % threads != 0 && tiles < n) ++tiles;
  const int64_t rows = ceil_div(n, tiles);
  const int64_t min_keys = env_int("DITFLOW_FAST_CPU_MIN_KEYS", kMinGemmKeys);
  const int64_t width = std::max(budget / (rows * hw * elem), ceil_div(min_keys, hw));
  return {rows, ceil_div(n, rows), std::clamp<int64_t>(width, 1, frames)};
}

// One forward score tile and where its reductions go; reduce_tile (amf_cpu.cpp) runs the argmax or
// the online soft-argmax of amf_reduce.h over each (row, key frame) segment of it.
template <typename T>
struct TileArgs {
  const T* s;       // score tile, rows x (groups * hw), row pitch ld
  int64_t ld, rows, groups, hw, frames;
  int64_t out0;     // [B, N, F] flat index of (first row, first frame of the group)
  T alpha;
  const T *px, *py;
  T *tgt, *lse;     // targets [B, N, F, 2]; lse [B, N, F] (soft only)
};

void reduce_tile(const TileArgs<float>& a, bool soft);
void reduce_tile(const TileArgs<double>& a, bool soft);

}  // namespace ditflow_fast
