// The CUDA side of include/flashflex/linked_kernel.hpp: loading a linked cubin, and what each
// loaded handle was loaded as, for the launchers to check a call against (forward.cu,
// backward.cu).
#pragma once

#include <cstddef>

#include "cuda/kernel_table.hpp"
#include "flashflex/linked_kernel.hpp"

namespace flashflex::cuda {

const void* load_linked_kernel(const void* image, std::size_t bytes, const LinkedKernelKind& kind);

// The kernel family to launch `kernel` on, after checking that it came from load_linked_kernel
// as the kernel of `pass` for `dtype` and `head_dim` (a call's), and that its family can run this
// call: `arch` is what the call's device and backend select (select_arch), `backend` the call's.
// Error(kInvalidArgument) naming what it was loaded as otherwise, Error(kUnsupported) for a family
// the call cannot run.
Arch linked_kernel_arch(const void* kernel, KernelPass pass, DType dtype, int head_dim, Arch arch, Backend backend);

}  // namespace flashflex::cuda
