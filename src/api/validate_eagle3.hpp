// Argument validation of the EAGLE3 entry points (include/flashflex/eagle3.hpp), built from the
// shared per-tensor checks of validate.hpp. Called by src/api/eagle3.cpp before any work.
#pragma once

#include <cstdint>

#include "api/validate.hpp"
#include "flashflex/eagle3.hpp"

namespace flashflex::detail {

// q against one key block (q_len = kv_len = T), plus the number of blocks (TTT step + 1).
struct Eagle3Shape : AttentionShape {
  int64_t num_blocks = 0;
};

Eagle3Shape validate_eagle3_forward(const Eagle3ForwardArgs& args);
Eagle3Shape validate_eagle3_backward(const Eagle3BackwardArgs& args);

}  // namespace flashflex::detail
