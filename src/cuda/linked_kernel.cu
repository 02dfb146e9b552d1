// Loading of linked cubins (linked_kernel.hpp) through the runtime's library API: the image is
// loaded once into every device (cudaLibraryLoadData copies it) and its one kernel becomes the
// handle; the handles and their kinds stay registered for the life of the process, so a
// handle is never reused for another kernel.
#include "cuda/linked_kernel.hpp"

#include <cuda_runtime_api.h>

#include <map>
#include <mutex>

#include "api/message.hpp"
#include "cuda/cuda_check.hpp"

namespace flashflex::cuda {
namespace {

std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}

std::map<const void*, LinkedKernelKind>& registry() {
  static std::map<const void*, LinkedKernelKind> kinds;
  return kinds;
}

}  // namespace

const void* load_linked_kernel(const void* image, std::size_t bytes, const LinkedKernelKind& kind) {
  (void)bytes;  // a cubin states its own size; the caller's is checked by the API layer
  cudaLibrary_t library = nullptr;
  FLASHFLEX_CUDA_CHECK(cudaLibraryLoadData(&library, image, nullptr, nullptr, 0, nullptr, nullptr, 0));
  unsigned count = 0;
  FLASHFLEX_CUDA_CHECK(cudaLibraryGetKernelCount(&count, library));
  if (count != 1) {
    cudaLibraryUnload(library);
    throw Error(ErrorKind::kInvalidArgument,
                flashflex::detail::concat("image: expected a linked cubin with one kernel, got ", count));
  }
  cudaKernel_t kernel = nullptr;
  FLASHFLEX_CUDA_CHECK(cudaLibraryEnumerateKernels(&kernel, 1, library));
  std::lock_guard<std::mutex> lock(registry_mutex());
  registry()[reinterpret_cast<const void*>(kernel)] = kind;
  return reinterpret_cast<const void*>(kernel);
}

Arch linked_kernel_arch(const void* kernel, KernelPass pass, DType dtype, int head_dim, Arch arch, Backend backend) {
  LinkedKernelKind kind;
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    const auto it = registry().find(kernel);
    if (it == registry().end()) {
      throw Error(ErrorKind::kInvalidArgument, "score_mod.linked_kernel: expected a handle from load_linked_kernel");
    }
    kind = it->second;
  }
  const auto pass_name = [](KernelPass p) { return p == KernelPass::kForward ? "the forward" : "the backward"; };
  if (kind.pass != pass || kind.dtype != dtype || kind.head_dim != head_dim) {
    throw Error(ErrorKind::kInvalidArgument,
                flashflex::detail::concat("score_mod.linked_kernel: loaded for ", pass_name(kind.pass), ", ",
                                          dtype_name(kind.dtype), ", head_dim ", kind.head_dim, "; this call is ",
                                          pass_name(pass), ", ", dtype_name(dtype), ", head_dim ", head_dim));
  }
  if (kind.family == Backend::kSm90 && arch != Arch::kSm90) {
    throw Error(ErrorKind::kUnsupported,
                "score_mod.linked_kernel: linked from the sm90 kernels, which need a Hopper GPU (compute capability "
                "9.x) and backend AUTO or SM90; link it from the sm80 kernels for this call");
  }
  if (kind.family == Backend::kSm80 && backend == Backend::kSm90) {
    throw Error(ErrorKind::kUnsupported,
                "score_mod.linked_kernel: linked from the sm80 kernels; this call asks for backend SM90");
  }
  return kind.family == Backend::kSm90 ? Arch::kSm90 : Arch::kSm80;
}

}  // namespace flashflex::cuda
