// Argument validation of the public entry points: every check runs before any work, and each
// failure is a flashflex::Error naming the argument, what was expected and what was given.
#pragma once

#include <cstdint>
#include <optional>

#include "flashflex/attention.hpp"

namespace flashflex::detail {

// The sizes every backend needs, read off validated arguments.
struct AttentionShape {
  int64_t batch = 0;
  int64_t q_heads = 0;
  int64_t kv_heads = 0;
  int64_t q_len = 0;
  int64_t kv_len = 0;
  int64_t head_dim = 0;
  int64_t v_head_dim = 0;
  DType dtype = DType::kFloat32;
  Device device{};
};

AttentionShape validate_forward(const ForwardArgs& args);
AttentionShape validate_backward(const BackwardArgs& args);

// args.scale, or 1 / sqrt(head_dim) when absent.
double resolve_scale(const std::optional<double>& scale, int64_t head_dim);

}  // namespace flashflex::detail
