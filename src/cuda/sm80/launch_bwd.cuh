// Definition of launch_bwd_main (declared in launch_bwd.hpp): checks the device's shared memory,
// raises the kernel's dynamic shared-memory limit once per device and launches mainloop_bwd.cuh's
// kernel. Included only by the instantiation files sm80/bwd_<dtype>_hdim<D>.cu.
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "cuda/cuda_check.hpp"
#include "cuda/sm80/kernel_traits_bwd.cuh"
#include "cuda/sm80/launch_bwd.hpp"
#include "cuda/sm80/mainloop_bwd.cuh"

namespace flashflex::sm80 {

template <DType kDType>
struct BwdElement;
template <>
struct BwdElement<DType::kBFloat16> {
  using type = __nv_bfloat16;
};
template <>
struct BwdElement<DType::kFloat16> {
  using type = __half;
};

template <DType kDType, int kHeadDim, ScoreModKind kMod>
void launch_bwd_main(const BwdParams& p, void* stream) {
  using Tr = BwdTraits<typename BwdElement<kDType>::type, kHeadDim>;
  auto kernel = bwd_main_kernel<Tr, kMod>;
  int device = 0;
  FLASHFLEX_CUDA_CHECK(cudaGetDevice(&device));
  int smem_optin = 0;
  FLASHFLEX_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (Tr::kSmemBytes > smem_optin) {
    throw Error(ErrorKind::kUnsupported, "q: the CUDA backward for head_dim " + std::to_string(kHeadDim) + " needs " +
                                             std::to_string(Tr::kSmemBytes) + " bytes of shared memory per block, "
                                             "device " + std::to_string(device) + " allows " +
                                             std::to_string(smem_optin));
  }
  // One bit per device ordinal (< 64): the attribute is set once per (kernel, device).
  static std::atomic<uint64_t> configured{0};
  const uint64_t bit = device < 64 ? (uint64_t{1} << device) : 0;
  if (bit == 0 || (configured.load() & bit) == 0) {
    FLASHFLEX_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes));
    configured.fetch_or(bit);
  }
  // (kv head x split, kv block, batch): blocks launch in order of x fastest, so every kv head's
  // first kv block starts before any second one (causal: the longest CTAs first, a shorter tail).
  const int kv_blocks = (p.kv_len + Tr::kBlockN - 1) / Tr::kBlockN;
  if (kv_blocks > 65535) {
    throw Error(ErrorKind::kUnsupported, "k: the CUDA backward supports at most " + std::to_string(65535 * Tr::kBlockN) +
                                             " keys for head_dim " + std::to_string(kHeadDim));
  }
  const dim3 grid(static_cast<unsigned>(p.kv_heads * p.splits), static_cast<unsigned>(kv_blocks),
                  static_cast<unsigned>(p.batch));
  kernel<<<grid, Tr::kNumThreads, Tr::kSmemBytes, static_cast<cudaStream_t>(stream)>>>(p);
  FLASHFLEX_CUDA_CHECK(cudaGetLastError());
}

}  // namespace flashflex::sm80
