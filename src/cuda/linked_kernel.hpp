// The CUDA side of include/flashflex/linked_kernel.hpp: loading a linked cubin, and what each
// loaded handle was loaded as, for the launchers to check a call against (forward.cu).
#pragma once

#include <cstddef>

#include "flashflex/linked_kernel.hpp"

namespace flashflex::cuda {

const void* load_linked_kernel(const void* image, std::size_t bytes, const LinkedKernelKind& kind);

// The kind `kernel` was loaded as, or null for a handle load_linked_kernel did not return.
const LinkedKernelKind* linked_kernel_kind(const void* kernel);

}  // namespace flashflex::cuda
