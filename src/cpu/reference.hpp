// CPU reference forward and backward: float64 accumulation, exact masking, the oracle of every
// test and the CPU path of the API. Called by src/api/attention.cpp after validation.
#pragma once

#include "flashflex/attention.hpp"

namespace flashflex::cpu {

// Preconditions (checked in src/api/validate.cpp): every tensor on the CPU, shapes and dtypes
// consistent, the block mask (if any) on the CPU with matching sizes and in-range contents;
// `scale` already resolved from args.scale.
void reference_forward(const ForwardArgs& args, double scale);
void reference_backward(const BackwardArgs& args, double scale);

}  // namespace flashflex::cpu
