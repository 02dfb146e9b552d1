// Public entry point of include/flashflex/linked_kernel.hpp: checks the kind against the kernels
// shipped as LTO-IR, then loads through the CUDA backend (src/cuda/linked_kernel.cu).
#include "flashflex/linked_kernel.hpp"

#include <cstdint>
#include <cstring>

#include "api/dispatch.hpp"
#include "api/message.hpp"
#include "kernel_set.hpp"
#if FLASHFLEX_WITH_CUDA
#include "cuda/linked_kernel.hpp"
#endif

#ifndef FLASHFLEX_WITH_CUDA
#define FLASHFLEX_WITH_CUDA 0
#endif
#ifndef FLASHFLEX_WITH_SM90
#define FLASHFLEX_WITH_SM90 0
#endif

namespace flashflex {

bool has_linked_kernels(Backend family) {
  if (family == Backend::kSm90) return FLASHFLEX_WITH_SM90 != 0;
  return family == Backend::kSm80 && FLASHFLEX_WITH_CUDA != 0;
}

const void* load_linked_kernel(const void* image, std::size_t bytes, const LinkedKernelKind& kind) {
  static constexpr unsigned char kElf[4] = {0x7f, 'E', 'L', 'F'};
  if (image == nullptr || bytes < sizeof kElf || std::memcmp(image, kElf, sizeof kElf) != 0) {
    throw Error(ErrorKind::kInvalidArgument, "image: expected a cubin (an ELF image), as nvJitLink links it");
  }
  if (kind.pass != KernelPass::kForward && kind.pass != KernelPass::kBackward) {
    throw Error(ErrorKind::kInvalidArgument,
                flashflex::detail::concat("kind.pass: expected forward (0) or backward (1), got ",
                                          static_cast<int>(kind.pass)));
  }
  if (kind.dtype != DType::kBFloat16 && kind.dtype != DType::kFloat16) {
    throw Error(ErrorKind::kInvalidArgument,
                flashflex::detail::concat("kind.dtype: expected bfloat16 or float16, got ", dtype_name(kind.dtype)));
  }
  bool known_dim = false;
  for (int d : kKernelHeadDims) known_dim = known_dim || d == kind.head_dim;
  if (!known_dim) {
    throw Error(ErrorKind::kInvalidArgument,
                flashflex::detail::concat("kind.head_dim: expected 64, 128 or 256, got ", kind.head_dim));
  }
  if (kind.family != Backend::kSm80 && kind.family != Backend::kSm90) {
    throw Error(ErrorKind::kInvalidArgument, "kind.family: expected Backend::kSm80 or Backend::kSm90 (the kernels the "
                                             "cubin was linked from), got kAuto");
  }
  if (kind.family == Backend::kSm90 && kind.pass == KernelPass::kBackward && kind.head_dim == 256) {
    throw Error(ErrorKind::kUnsupported, "kind.head_dim: the linked sm90 backward is built for head dims 64 and 128 "
                                         "(the sm90 backward's), got 256; the sm80 family has 256");
  }
  if (!has_linked_kernels(kind.family)) {
    throw Error(ErrorKind::kUnsupported, flashflex::detail::concat("kind.family: this build has no ",
                                                                   kind.family == Backend::kSm90 ? "sm90" : "sm80",
                                                                   " kernels to run a linked cubin on"));
  }
#if FLASHFLEX_WITH_CUDA
  return cuda::load_linked_kernel(image, bytes, kind);
#else
  detail::no_cuda_backend();
#endif
}

}  // namespace flashflex
