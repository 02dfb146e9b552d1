// Kernels linked at run time with a generated score mod (ScoreModKind::kLinked). The library
// ships those kernels as LTO-IR that calls an external hook (flashflex_score_mod); a caller
// compiles the hook, links both into a cubin (python/flashflex/_score_mod_link.py does it with
// NVRTC and nvJitLink) and loads it here once. The handle then goes into ScoreMod::linked for
// each call; the library checks that it was loaded for the call's pass, dtype and head dim, and
// runs it on the kernel family it was linked from.
//
// Built, bf16 / fp16: the sm80 family (LTO-IR of compute_80, linked for any GPU from Ampere on)
// forward and backward main kernel at head dims 64, 128, 256; the Hopper family (sm_90a) forward
// at 64, 128, 256 and backward at 64 and 128. The backward gives dq, dk, dv, and the gradients of
// captured tensors through ScoreMod::hook_gather_grads (added atomically: not in deterministic mode).
#pragma once

#include <cstddef>

#include "flashflex/attention.hpp"
#include "flashflex/tensor.hpp"

namespace flashflex {

enum class KernelPass { kForward, kBackward };

// What a linked cubin was built from: the LTO-IR of that pass, dtype and head dim of one kernel
// family (Backend::kSm80: the portable kernels, any GPU from Ampere on; kSm90: the Hopper
// kernels). A call runs the handle's family: kSm90 needs a Hopper GPU and a backend other than
// kSm80, kSm80 a backend other than kSm90.
struct LinkedKernelKind {
  KernelPass pass = KernelPass::kForward;
  DType dtype = DType::kBFloat16;
  int head_dim = 0;
  Backend family = Backend::kSm90;
};

// Loads `image` (a cubin of size `bytes`, kept by the library: the caller may free its copy),
// whose one kernel is of `kind`, into every device; the handle lives as long as the process.
// Throws Error(kUnsupported) in builds without the CUDA kernels (or, for kSm90, without the Hopper
// kernels), kInvalidArgument for a kind no LTO-IR exists for, and kCuda when the driver refuses
// the image.
const void* load_linked_kernel(const void* image, std::size_t bytes, const LinkedKernelKind& kind);

// Whether this build compiled the LTO-IR of the linked kernels of `family` (CMake installs it as
// share/flashflex/kernels/*.fatbin, and into the Python package as flashflex/kernels/).
bool has_linked_kernels(Backend family);

}  // namespace flashflex
