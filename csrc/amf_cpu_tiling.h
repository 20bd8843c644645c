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
// A clone only speeds up the code compiled inside it: a template body it calls must be inlined into it
// (AMF_INLINE), else GCC emits that body once, for the baseline, and every clone calls that copy. Until
// session 15 the soft reduction and the logit-gradient pass ran that way, 4 wide (SSE2).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define AMF_TARGET_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define AMF_INLINE __attribute__((always_inline)) inline
#else
#define AMF_TARGET_CLONES
#define AMF_INLINE inline
#endif

namespace ditflow_fast {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A positive integer from the environment (read per call, for tuning experiments), else fallback.
inline int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  return (v && *v) ? std::max<int64_t>(1, std::atoll(v)) : fallback;
}

// Query tiles of `rows` rows (every thread gets the same number of tiles when the shape allows) and,
// per GEMM, `group` consecutive key frames, as many as keep the rows x (group * hw) score tile
// within the tile budget (4 MiB). Wider tiles amortise the GEMM's packing of the query tile over
// more keys: at cpu-5b (330 keys a frame) 660 x 330 tiles ran at 1.09x to 1.16x of the whole GEMM,
// 660 x 1,320 ones at 1.02x to 1.05x.
// `fit_l2` (the soft forward): where one key frame has at least kMinFitKeys keys and its tile fits
// this core's L2 (l2_bytes) with at least kMinFitRows rows, rows are cut so that it does, one frame
// a GEMM. Measured, the kernel alone against the whole GEMM, 2 threads, 1 MiB L2
// (docs/runs/soft_tiles/rows_amd-epyc-zen4-2c.txt; hw = keys a frame, D = H*d):
//   hw 1,350 (D 1,536 or 3,072; 3, 6 or 13 frames): 192 rows 0.82x to 0.91x, 768 rows 0.98x to 1.17x;
//   hw 3,600, D 1,536: 72 rows 1.27x, 192 rows 1.18x, 768 rows 1.07x (D 3,072: 192 rows 1.23x, 768 1.07x).
// Why small rows win at 1,350 keys and lose at 3,600 was not profiled; other shapes keep tall tiles.
// Knobs: DITFLOW_FAST_CPU_ROWS (max query rows per tile, over the L2 cut's; the L2 budget still groups frames),
// DITFLOW_FAST_CPU_TILE_KB (the tile budget, and the L2 size the cut assumes).
struct Plan {
  int64_t rows, tiles_per_batch, group;
};

constexpr int64_t kMaxTileRows = 768, kMinFitRows = 192, kMinFitKeys = 1024, kTileBudget = int64_t(4) << 20;

inline int64_t l2_bytes() {
#ifdef _SC_LEVEL2_CACHE_SIZE
  const long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
  if (v > 0) return v;
#endif
  return int64_t(1) << 20;
}

inline Plan forward_plan(int64_t batch, int64_t n, int64_t frames, int64_t hw, int64_t elem, bool fit_l2) {
  const int64_t threads = at::get_num_threads();
  const int64_t knob = env_int("DITFLOW_FAST_CPU_TILE_KB", 0) * 1024;  // 0: unset
  int64_t budget = knob ? knob : kTileBudget;
  int64_t max_rows = kMaxTileRows;
  if (fit_l2 && hw >= kMinFitKeys) {
    const int64_t l2 = knob ? knob : l2_bytes();
    if (l2 / (hw * elem) >= kMinFitRows) {
      budget = l2;
      max_rows = std::min(max_rows, l2 / (hw * elem));
    }
  }
  max_rows = env_int("DITFLOW_FAST_CPU_ROWS", max_rows);
  int64_t tiles = ceil_div(n, max_rows);
  // round the total number of tiles up to a multiple of the thread count (balanced threads)
  while ((batch * tiles) % threads != 0 && tiles < n) ++tiles;
  const int64_t rows = ceil_div(n, tiles);
  const int64_t group = std::clamp<int64_t>(budget / (rows * hw * elem), 1, frames);
  return {rows, ceil_div(n, rows), group};
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
