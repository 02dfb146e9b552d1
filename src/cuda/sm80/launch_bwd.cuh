// Definition of launch_bwd_main (declared in launch_bwd.hpp): sizes the kernel's shared memory
// for the architecture of its code (sm_90 code stages dQ for the copy engine: kSmemBytesBulkDq),
// raises the kernel's limit once per device (device_info.hpp), picks the dQ writer
// (common/dq_writer.cuh) and launches mainloop_bwd.cuh's kernel. Included only by the
// instantiation files sm80/bwd_<dtype>_hdim<D>.cu.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "api/message.hpp"
#include "cuda/cuda_check.hpp"
#include "cuda/device_info.hpp"
#include "cuda/element_type.cuh"
#include "cuda/sm80/kernel_traits_bwd.cuh"
#include "cuda/sm80/launch_bwd.hpp"
#include "cuda/sm80/mainloop_bwd.cuh"
#include "cuda/tma_map.hpp"

namespace flashflex::sm80 {

template <DType kDType, int kHeadDim, ScoreModKind kMod>
void launch_bwd_main(const cuda::BwdParams& p, void* stream) {
  using Tr = BwdTraits<cuda::element_t<kDType>, kHeadDim>;
  static_assert(Tr::kBlockN == bwd_block_n(kHeadDim), "launch_bwd.hpp's block size is the traits'");
  auto kernel = bwd_main_kernel<Tr, kMod>;
  const void* key = reinterpret_cast<const void*>(kernel);
  const int device = cuda::current_device();
  const int smem_bytes = cuda::kernel_binary_arch(key, device) >= 90 ? Tr::kSmemBytesBulkDq : Tr::kSmemBytes;
  cuda::prepare_kernel_smem(key, smem_bytes, device, "the CUDA backward", kHeadDim);
  // (kv head x split, kv block, batch): blocks launch in order of x fastest, so every kv head's
  // first kv block starts before any second one (causal: the longest CTAs first, a shorter tail).
  const int kv_blocks = (p.kv_len + Tr::kBlockN - 1) / Tr::kBlockN;
  if (kv_blocks > 65535) {
    throw Error(ErrorKind::kUnsupported, flashflex::detail::concat("k: the CUDA backward supports at most ",
                                                                   65535 * Tr::kBlockN, " keys for head_dim ",
                                                                   kHeadDim));
  }
  const dim3 grid(static_cast<unsigned>(p.kv_heads * p.splits), static_cast<unsigned>(kv_blocks),
                  static_cast<unsigned>(p.batch));
  // dQ through the copy engine: where the code has the staging memory, and not in deterministic
  // mode (its adds take turns through red.add); tensor-map coordinates are 32-bit.
  cuda::BwdParams args = p;
  const int64_t dq_rows = static_cast<int64_t>(p.batch) * p.q_heads * p.q_len_pad;
  args.dq_bulk = Tr::kBulkDq && smem_bytes == Tr::kSmemBytesBulkDq && !p.deterministic && dq_rows < (int64_t{1} << 31);
  if (args.dq_bulk) cuda::encode_dq_tensor_map(&args.dq_map, p.dq_accum, dq_rows, kHeadDim, Tr::kDqTileM);
  kernel<<<grid, Tr::kNumThreads, smem_bytes, static_cast<cudaStream_t>(stream)>>>(args);
  FLASHFLEX_CUDA_CHECK(cudaGetLastError());
}

}  // namespace flashflex::sm80
