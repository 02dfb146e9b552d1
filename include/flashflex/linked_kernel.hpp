// Kernels linked at run time with a generated score mod (ScoreModKind::kLinked). The library
// ships those kernels as LTO-IR that calls an external hook (flashflex_score_mod); a caller
// compiles the hook, links both into a cubin (python/flashflex/_score_mod_link.py does it with
// NVRTC and nvJitLink) and loads it here once. The handle then goes into ScoreMod::linked for
// each call; the library checks that it was loaded for the call's pass, dtype and head dim.
//
// Built: the Hopper (sm_90a) forward, bf16 / fp16, head dims 64, 128, 256, and the sm90
// backward main kernel at head dims 64 and 128 (dq, dk, dv, and the gradients of captured
// tensors through ScoreMod::hook_gather_grads, added atomically: not in deterministic mode).
#pragma once

#include <cstddef>

#include "flashflex/tensor.hpp"

namespace flashflex {

enum class KernelPass { kForward, kBackward };

// What a linked cubin was built from: the LTO-IR of that pass, dtype and head dim.
struct LinkedKernelKind {
  KernelPass pass = KernelPass::kForward;
  DType dtype = DType::kBFloat16;
  int head_dim = 0;
};

// Loads `image` (a cubin of size `bytes`, kept by the library: the caller may free its copy),
// whose one kernel is of `kind`, into every device; the handle lives as long as the process.
// Throws Error(kUnsupported) in builds without the CUDA kernels, kInvalidArgument for a kind no
// LTO-IR exists for, and kCuda when the driver refuses the image.
const void* load_linked_kernel(const void* image, std::size_t bytes, const LinkedKernelKind& kind);

// Whether this build compiled the LTO-IR of the linked kernels (CMake installs it as
// share/flashflex/kernels/*.fatbin, and into the Python package as flashflex/kernels/).
bool has_linked_kernels();

}  // namespace flashflex
