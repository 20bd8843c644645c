// How the CPU forward kernels cut their work and reduce a score tile (shared by amf_cpu.cpp and
// amf_cpu_screen.cpp).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>

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
// per GEMM, `group` consecutive key frames, as many as keep the rows x (group * hw) score tile
// within the tile budget. Wider tiles amortise the GEMM's packing of the query tile over more keys;
// the budget keeps the tile in cache (L2 plus this core's share of L3). Knobs:
// DITFLOW_FAST_CPU_ROWS (max query rows per tile, 768), DITFLOW_FAST_CPU_TILE_KB (tile budget, 4096).
struct Plan {
  int64_t rows, tiles_per_batch, group;
};

inline Plan forward_plan(int64_t batch, int64_t n, int64_t frames, int64_t hw, int64_t elem) {
  const int64_t threads = at::get_num_threads();
  const int64_t max_rows = env_int("DITFLOW_FAST_CPU_ROWS", 768);
  const int64_t tile_bytes = env_int("DITFLOW_FAST_CPU_TILE_KB", 4096) * 1024;
  int64_t tiles = ceil_div(n, max_rows);
  // round the total number of tiles up to a multiple of the thread count (balanced threads)
  while ((batch * tiles) % threads != 0 && tiles < n) ++tiles;
  const int64_t rows = ceil_div(n, tiles);
  const int64_t group = std::clamp<int64_t>(tile_bytes / (rows * hw * elem), 1, frames);
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
