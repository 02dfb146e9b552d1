// CPU reference of EAGLE3 TTT attention (include/flashflex/eagle3.hpp): float64, exact, the oracle
// of the future EAGLE3 kernel and the CPU path of the API. Called by src/api/eagle3.cpp after
// validation.
#pragma once

#include "flashflex/eagle3.hpp"

namespace flashflex::cpu {

// Preconditions (checked in src/api/validate_eagle3.cpp): every tensor on the CPU, at least one
// block, all blocks [B, Hkv, T, D] like q's T and D, seq_lengths (if any) int32 / int64 [B] with
// values in [0, T], `scale` already resolved from args.scale.
void reference_eagle3_forward(const Eagle3ForwardArgs& args, double scale);
void reference_eagle3_backward(const Eagle3BackwardArgs& args, double scale);

}  // namespace flashflex::cpu
