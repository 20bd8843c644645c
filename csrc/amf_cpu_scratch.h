// Large per-call temporaries of the CPU kernels, kept between calls (amf_cpu_scratch.cpp).
//
// Why: glibc returns freed blocks of several MB to the system, so every call of the CPU backend faulted
// its temporaries in again: 8,000 to 12,000 minor faults (31 to 48 MB) per call at the cpu-5b preset on
// the 2-core CI machine, where they made the argmax about 30% slower (docs/native.md, the "Scratch" item).
//
// A slot's buffer is handed out again only when no tensor refers to it any more (its storage's use
// count), so a copy saved for the backward, a caller still holding a view, or a second thread calling at
// the same time is never shared: the slot leaves that buffer to its users (freed when the last lets go)
// and takes a new one. The slots together hold at most DITFLOW_FAST_CPU_SCRATCH_MB MiB (read per call; 0
// turns keeping off), by default 64 MiB or an eighth of the memory available (MemAvailable) when a slot
// grows past that, whichever is more: a request beyond the cap is allocated and freed as before.
// Why the eighth: on the 2-core Intel VM of session 20 a fresh page cost about 5 us to fault in, and at
// cogvideox-5b-f6 a forward + backward faulted in 825 MB a call (211,000 faults) under the old 64 MiB cap.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace ditflow_fast {

// Slot numbers are part of the op schema (the Python side gathers qc and kc into slots 0 and 1).
enum class Slot : int64_t {
  kQc = 0,
  kKc = 1,
  kQBf16 = 2,       // the argmax screen's rounded copies
  kKBf16 = 3,
  kPackedKeys = 4,  // amf_cpu_bf16.h's key panels
  kTiles = 5,       // the forward's per-thread score tiles
  kChunk = 6,       // the backward's row chunk
  kKCentred = 7,    // the bf16 backward's centred keys and rounded logit gradients
  kDzBf16 = 8,
  kScores = 9,      // the soft forward's kept [B, N, N] scores, for its backward
  kDq = 10,         // the float32 backward's [B, N, D] gradients
  kDk = 11,
  kGradQ = 12,      // the Python side's [B, H, T, d] gradients, re-laid out from kDq, kDk
  kGradK = 13,
  kCount = 14,
};

// A contiguous tensor of `sizes` and `dtype` on the CPU, uninitialised: the slot's kept buffer when it
// is free and large enough, else a new one (kept for the slot when the cap allows).
at::Tensor scratch(Slot slot, at::IntArrayRef sizes, at::ScalarType dtype);
// Forgets every kept buffer (one still in use is freed when its last user lets go); returns their bytes.
int64_t release_scratch();
// Bytes the slots hold now (in use or not).
int64_t scratch_bytes();

}  // namespace ditflow_fast
