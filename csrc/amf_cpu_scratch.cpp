// Scratch buffers kept between calls: see amf_cpu_scratch.h.
#include "amf_cpu_scratch.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <string>

namespace ditflow_fast {
namespace {

constexpr double kDefaultCapMb = 64;

std::mutex mu;
// flat uint8 buffers, guarded by mu; never destroyed, so no tensor outlives the allocator at exit
auto& kept = *new std::array<at::Tensor, static_cast<size_t>(Slot::kCount)>();

// MemAvailable of /proc/meminfo (kB there) in bytes, 0 where there is none
int64_t available_bytes() {
  std::ifstream meminfo("/proc/meminfo");
  const std::string key = "MemAvailable:";
  for (std::string line; std::getline(meminfo, line);)
    if (line.compare(0, key.size(), key) == 0) return std::strtoll(line.c_str() + key.size(), nullptr, 10) * 1024;
  return 0;
}

// DITFLOW_FAST_CPU_SCRATCH_MB in bytes, -1 when unset
int64_t set_cap_bytes() {
  const char* raw = std::getenv("DITFLOW_FAST_CPU_SCRATCH_MB");
  if (raw == nullptr || *raw == '\0') return -1;
  char* end = nullptr;
  errno = 0;
  const double mb = std::strtod(raw, &end);
  TORCH_CHECK(end != raw && *end == '\0' && errno == 0 && std::isfinite(mb) && mb >= 0,
              "DITFLOW_FAST_CPU_SCRATCH_MB must be a number of MiB >= 0, got '", raw, "'");
  return static_cast<int64_t>(mb * (1 << 20));
}

// The default cap for slots that would hold `need` bytes: /proc/meminfo is read only past the floor.
int64_t default_cap_bytes(int64_t need) {
  const auto floor = static_cast<int64_t>(kDefaultCapMb * (1 << 20));
  return need <= floor ? floor : std::max(floor, available_bytes() / 8);
}

bool is_free(const at::Tensor& buf) { return buf.defined() && buf.storage().use_count() == 1; }

int64_t held_bytes() {
  int64_t total = 0;
  for (const at::Tensor& buf : kept)
    if (buf.defined()) total += buf.numel();
  return total;
}

at::Tensor as_view(const at::Tensor& flat, at::IntArrayRef sizes, at::ScalarType dtype, int64_t bytes) {
  // a new TensorImpl over the buffer's storage, so the storage's use count says whether it is handed out
  return flat.narrow(0, 0, bytes).view(dtype).view(sizes);
}

}  // namespace

at::Tensor scratch(Slot slot, at::IntArrayRef sizes, at::ScalarType dtype) {
  const auto index = static_cast<size_t>(slot);
  TORCH_CHECK(index < kept.size(), "ditflow_fast scratch: no slot ", static_cast<int64_t>(slot));
  int64_t numel = 1;
  for (const int64_t s : sizes) {
    TORCH_CHECK(s >= 0, "ditflow_fast scratch: negative size in ", sizes);
    numel *= s;
  }
  const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(dtype));
  const auto fresh = [&] { return at::empty(sizes, at::TensorOptions().dtype(dtype)); };
  if (bytes == 0) return fresh();
  const int64_t set_cap = set_cap_bytes();
  std::lock_guard<std::mutex> lock(mu);
  at::Tensor& buf = kept[index];
  if (is_free(buf) && buf.numel() >= bytes) return as_view(buf, sizes, dtype, bytes);
  // too small, or in use (never shared): the slot lets it go, to be freed by its last user, and takes a new one
  buf = at::Tensor();
  const int64_t need = held_bytes() + bytes;
  if (need > (set_cap >= 0 ? set_cap : default_cap_bytes(need))) return fresh();
  {
    // a normal tensor even when this call runs under torch.inference_mode: later calls outside it reuse it
    const c10::InferenceMode normal(false);
    buf = at::empty({bytes}, at::TensorOptions().dtype(at::kByte));
  }
  return as_view(buf, sizes, dtype, bytes);
}

int64_t release_scratch() {
  std::lock_guard<std::mutex> lock(mu);
  const int64_t held = held_bytes();
  for (at::Tensor& buf : kept) buf = at::Tensor();  // a buffer in use is freed when its last user lets go
  return held;
}

int64_t scratch_bytes() {
  std::lock_guard<std::mutex> lock(mu);
  return held_bytes();
}

}  // namespace ditflow_fast
