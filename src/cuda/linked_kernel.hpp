// The CUDA side of include/flashflex/linked_kernel.hpp: loading a linked cubin, and what each
// loaded handle was loaded as, for the launchers to check a call against (forward.cu).
#pragma once

#include <cstddef>

#include "flashflex/linked_kernel.hpp"

namespace flashflex::cuda {

const void* load_linked_kernel(const void* image, std::size_t bytes, const LinkedKernelKind& kind);

// Checks that `kernel` came from load_linked_kernel as the kernel of `pass` for `dtype` and
// `head_dim` (a call's); Error(kInvalidArgument) naming what it was loaded as otherwise.
void check_linked_kernel(const void* kernel, KernelPass pass, DType dtype, int head_dim);

}  // namespace flashflex::cuda
