// The heads concatenation of q or k and its value check in one pass (amf_cpu_gather.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

namespace ditflow_fast {

// t [B, H, T, d], float32 or float64, any strides -> (its video tokens as [B, T - text_tokens, H * d] in the
// scratch slot `slot`, max|t| over all of t, text tokens included, or NaN where t holds NaN or inf). The
// Python side's finiteness and range checks read the maximum, so q and k are read once instead of twice.
std::tuple<at::Tensor, double> gather_checked(const at::Tensor& t, int64_t text_tokens, int64_t slot);

}  // namespace ditflow_fast
