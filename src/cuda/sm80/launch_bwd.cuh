// Definition of launch_bwd_main (declared in launch_bwd.hpp): sizes the kernel's shared memory
// for the architecture of its code (sm_90 code stages dQ for the copy engine: kSmemBytesBulkDq),
// raises the kernel's limit once per device (device_info.hpp), picks the dQ writer
// (common/dq_writer.cuh) and launches mainloop_bwd.cuh's kernel: the compiled one of a score mod,
// or one linked at run time (launch_bwd_linked). Included only by the instantiation files
// sm80/bwd_<dtype>_hdim<D>.cu.
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

namespace detail {

// Launches `kernel`, bwd_main_kernel<Tr, ...>: compiled in, or the one kernel of a linked cubin
// (a cudaKernel_t, which the runtime takes where a function is). code_arch: the architecture its
// code was compiled for (a linked kernel's LTO-IR is compute_80's: no copy-engine dQ path, whatever
// the GPU the cubin was linked for).
template <class Tr>
void launch_bwd_kernel(const void* kernel, int code_arch, const cuda::BwdParams& p, void* stream) {
  const int device = cuda::current_device();
  const int smem_bytes = code_arch >= 90 ? Tr::kSmemBytesBulkDq : Tr::kSmemBytes;
  cuda::prepare_kernel_smem(kernel, smem_bytes, device, "the CUDA backward", Tr::kHeadDim);
  // (kv head x split, kv block, batch): blocks launch in order of x fastest, so every kv head's
  // first kv block starts before any second one (causal: the longest CTAs first, a shorter tail).
  const int kv_blocks = (p.kv_len + Tr::kBlockN - 1) / Tr::kBlockN;
  if (kv_blocks > 65535) {
    throw Error(ErrorKind::kUnsupported, flashflex::detail::concat("k: the CUDA backward supports at most ",
                                                                   65535 * Tr::kBlockN, " keys for head_dim ",
                                                                   Tr::kHeadDim));
  }
  const dim3 grid(static_cast<unsigned>(p.kv_heads * p.splits), static_cast<unsigned>(kv_blocks),
                  static_cast<unsigned>(p.batch));
  // dQ through the copy engine: where the code has the staging memory, and not in deterministic
  // mode (its adds take turns through red.add); tensor-map coordinates are 32-bit.
  cuda::BwdParams args = p;
  const int64_t dq_rows = static_cast<int64_t>(p.batch) * p.q_heads * p.q_len_pad;
  args.dq_bulk = Tr::kBulkDq && smem_bytes == Tr::kSmemBytesBulkDq && !p.deterministic && dq_rows < (int64_t{1} << 31);
  if (args.dq_bulk) cuda::encode_dq_tensor_map(&args.dq_map, p.dq_accum, dq_rows, Tr::kHeadDim, Tr::kDqTileM);
  void* kernel_args[] = {&args};
  // Checked through cudaGetLastError, which also clears a failed launch's error (as after <<<>>>).
  (void)cudaLaunchKernel(kernel, grid, dim3(Tr::kNumThreads), kernel_args, smem_bytes,
                         static_cast<cudaStream_t>(stream));
  FLASHFLEX_CUDA_CHECK(cudaGetLastError());
}

}  // namespace detail

template <DType kDType, int kHeadDim, ScoreModKind kMod>
void launch_bwd_main(const cuda::BwdParams& p, void* stream) {
  using Tr = BwdTraits<cuda::element_t<kDType>, kHeadDim>;
  static_assert(Tr::kBlockN == bwd_block_n(kHeadDim), "launch_bwd.hpp's block size is the traits'");
  const void* kernel = reinterpret_cast<const void*>(bwd_main_kernel<Tr, kMod>);
  detail::launch_bwd_kernel<Tr>(kernel, cuda::kernel_binary_arch(kernel, cuda::current_device()), p, stream);
}

template <DType kDType, int kHeadDim>
void launch_bwd_linked(const cuda::BwdParams& p, const void* kernel, void* stream) {
  using Tr = BwdTraits<cuda::element_t<kDType>, kHeadDim>;
  detail::launch_bwd_kernel<Tr>(kernel, 80, p, stream);
}

}  // namespace flashflex::sm80
