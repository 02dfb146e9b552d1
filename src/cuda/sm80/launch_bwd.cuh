// Definition of launch_bwd_main (declared in launch_bwd.hpp): checks the device's shared memory,
// raises the kernel's dynamic shared-memory limit once per device and launches mainloop_bwd.cuh's
// kernel. Included only by the instantiation files sm80/bwd_<dtype>_hdim<D>.cu.
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "cuda/cuda_check.hpp"
#include "cuda/sm80/dq_tensor_map.hpp"
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
  // Per device ordinal (< 64), once: the architecture of the code that runs there (sm_90 and newer
  // may stage dQ in kDqStageBytes more shared memory) and the kernel's dynamic shared-memory limit.
  static std::atomic<int> smem_bytes_of[64] = {};
  int smem_bytes = device < 64 ? smem_bytes_of[device].load() : 0;
  if (smem_bytes == 0) {
    cudaFuncAttributes attr{};
    FLASHFLEX_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
    smem_bytes = attr.binaryVersion >= 90 ? Tr::kSmemBytesBulkDq : Tr::kSmemBytes;
    int smem_optin = 0;
    FLASHFLEX_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    if (smem_bytes > smem_optin) {
      throw Error(ErrorKind::kUnsupported, "q: the CUDA backward for head_dim " + std::to_string(kHeadDim) +
                                               " needs " + std::to_string(smem_bytes) +
                                               " bytes of shared memory per block, device " + std::to_string(device) +
                                               " allows " + std::to_string(smem_optin));
    }
    FLASHFLEX_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
    if (device < 64) smem_bytes_of[device].store(smem_bytes);
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
  // dQ through the copy engine: where the code has the staging memory, and not in deterministic
  // mode (its adds take turns through red.add); tensor-map coordinates are 32-bit.
  BwdParams args = p;
  const int64_t dq_rows = static_cast<int64_t>(p.batch) * p.q_heads * p.q_len_pad;
  args.dq_bulk = Tr::kBulkDq && smem_bytes == Tr::kSmemBytesBulkDq && !p.deterministic && dq_rows < (int64_t{1} << 31);
  if (args.dq_bulk) encode_dq_tensor_map(&args.dq_map, p.dq_accum, dq_rows, kHeadDim, Tr::kDqTileM);
  kernel<<<grid, Tr::kNumThreads, smem_bytes, static_cast<cudaStream_t>(stream)>>>(args);
  FLASHFLEX_CUDA_CHECK(cudaGetLastError());
}

}  // namespace flashflex::sm80
