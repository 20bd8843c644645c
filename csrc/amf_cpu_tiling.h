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
// per GEMM, `group` consecutive key frames. Rows are cut so that one frame's rows x hw score tile
// fits the tile budget; frames are added while the tile stays within it, and up to kMinGemmKeys keys
// whatever the budget, since a GEMM over fewer keys spends too much of its time packing the query
// tile (cpu-5b, 330 keys a frame: 660 x 330 tiles 1.09x to 1.16x of the whole GEMM, 660 x 1320 ones
// 1.02x to 1.05x). The soft forward's budget is this core's L2 (l2_bytes), measured (N = 8,100,
// 1 MiB L2: 193-row tiles 0.90x to 0.96x of the whole GEMM, 675-row ones 1.05x to 1.23x); probably
// because the GEMM adds into its output once per block of the depth, and an output tile beyond L2
// goes to L3 and back on every block (not profiled). Knobs: DITFLOW_FAST_CPU_ROWS (max query rows per tile, 768), DITFLOW_FAST_CPU_TILE_KB
// (tile budget), DITFLOW_FAST_CPU_MIN_KEYS (kMinGemmKeys).
struct Plan {
  int64_t rows, tiles_per_batch, group;
};

constexpr int64_t kMinTileRows = 64;  // below this the tile GEMM streams keys for too few rows
constexpr int64_t kMinGemmKeys = 1024;

inline int64_t l2_bytes() {
  const long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
  return v > 0 ? v : int64_t(1) << 20;
}

inline Plan forward_plan(int64_t batch, int64_t n, int64_t frames, int64_t hw, int64_t elem, int64_t budget) {
  const int64_t threads = at::get_num_threads();
  const int64_t tile_bytes = env_int("DITFLOW_FAST_CPU_TILE_KB", std::max<int64_t>(1, budget / 1024)) * 1024;
  const int64_t fit_rows = std::max(kMinTileRows, tile_bytes / (hw * elem));
  const int64_t max_rows = env_int("DITFLOW_FAST_CPU_ROWS", std::min<int64_t>(768, fit_rows));
  int64_t tiles = ceil_div(n, max_rows);
  // round the total number of tiles up to a multiple of the thread count (balanced threads)
  while ((batch * tiles) % threads != 0 && tiles < n) ++tiles;
  const int64_t rows = ceil_div(n, tiles);
  const int64_t min_keys = env_int("DITFLOW_FAST_CPU_MIN_KEYS", kMinGemmKeys);
  const int64_t fit = std::max(tile_bytes / (rows * hw * elem), ceil_div(min_keys, hw));
  const int64_t group = std::clamp<int64_t>(fit, 1, frames);
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
