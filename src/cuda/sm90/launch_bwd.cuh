// Definition of the sm_90a backward launchers (declared in launch_bwd.hpp): raises the kernel's
// shared-memory limit once per device (device_info.hpp), encodes the tensor maps of Q, K, V, dO
// and of the fp32 dQ accumulator (tma_map.hpp) and launches kernel_bwd.cuh's kernel (compiled in,
// or linked at run time with a score mod: launch_bwd_linked). Blocks
// launch x fastest. Default: grid (kv head x split, kv tile, batch), so every kv head's first kv
// tile (causal: the longest walk) starts before any second one. Deterministic: grid (kv tile in
// reverse, kv head x split, batch): the CTAs of one kv head are resident together, and the dQ
// turns along each q tile (descending kv order) run as a wavefront among them instead of waiting
// on CTAs launched much later (H200, causal 16k: 18.8 -> 16.8 ms; the default order measured no
// better this way, document masks 7% worse: bench/NOTES.md). The caller (backward.cu) has checked
// bwd_unsupported (the grid's y limit). Included only by the instantiation files sm90/bwd_*.cu.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include "cuda/cuda_check.hpp"
#include "cuda/device_info.hpp"
#include "cuda/element_type.cuh"
#include "cuda/sm90/kernel_bwd.cuh"
#include "cuda/sm90/launch_bwd.hpp"
#include "cuda/tma_map.hpp"

namespace flashflex::sm90 {

namespace detail {

// Launches `kernel`, bwd_kernel<Traits, ...> for this dtype and head dim: compiled in, or the one
// kernel of a linked cubin (a cudaKernel_t, which the runtime takes where a function is).
template <DType kDType, int kHeadDim>
void launch_bwd_kernel(const void* kernel, const cuda::BwdParams& p, void* stream) {
  using Traits = typename BwdConfig<cuda::element_t<kDType>, kHeadDim>::Traits;
  constexpr int kSmem = Traits::kSmemBytes;
  const int device = cuda::current_device();
  cuda::prepare_kernel_smem(kernel, kSmem, device, "the sm90 backward", kHeadDim);
  if (p.num_kv_tiles == 0 || p.batch == 0 || p.kv_heads == 0) return;
  constexpr bool kBf16 = kDType == DType::kBFloat16;
  CUtensorMap map_q, map_k, map_v, map_do;
  cuda::encode_bhtd_map(&map_q, "q", p.q, kBf16, kHeadDim, p.q_len, p.q_heads, p.batch, Traits::kBlockM);
  cuda::encode_bhtd_map(&map_do, "dout", p.dout, kBf16, kHeadDim, p.q_len, p.q_heads, p.batch, Traits::kBlockM);
  cuda::encode_bhtd_map(&map_k, "k", p.k, kBf16, kHeadDim, p.kv_len, p.kv_heads, p.batch, Traits::kBlockN);
  cuda::encode_bhtd_map(&map_v, "v", p.v, kBf16, kHeadDim, p.kv_len, p.kv_heads, p.batch, Traits::kBlockN);
  cuda::BwdParams args = p;  // with the dQ map (the kernel always adds dQ through the copy engine)
  cuda::encode_dq_tensor_map(&args.dq_map, p.dq_accum, static_cast<int64_t>(p.batch) * p.q_heads * p.q_len_pad,
                             kHeadDim, 64);
  const unsigned tiles = static_cast<unsigned>(p.num_kv_tiles), heads = static_cast<unsigned>(p.kv_heads * p.splits);
  const dim3 grid(p.deterministic ? tiles : heads, p.deterministic ? heads : tiles, static_cast<unsigned>(p.batch));
  void* kernel_args[] = {&args, &map_q, &map_k, &map_v, &map_do};
  // Checked through cudaGetLastError, which also clears a failed launch's error (as after <<<>>>).
  (void)cudaLaunchKernel(kernel, grid, dim3(Traits::kNumThreads), kernel_args, kSmem,
                         static_cast<cudaStream_t>(stream));
  FLASHFLEX_CUDA_CHECK(cudaGetLastError());
}

}  // namespace detail

template <DType kDType, int kHeadDim, ScoreModKind kMod>
void launch_bwd(const cuda::BwdParams& p, void* stream) {
  using Traits = typename BwdConfig<cuda::element_t<kDType>, kHeadDim>::Traits;
  detail::launch_bwd_kernel<kDType, kHeadDim>(reinterpret_cast<const void*>(bwd_kernel<Traits, kMod>), p, stream);
}

template <DType kDType, int kHeadDim>
void launch_bwd_linked(const cuda::BwdParams& p, const void* kernel, void* stream) {
  detail::launch_bwd_kernel<kDType, kHeadDim>(kernel, p, stream);
}

}  // namespace flashflex::sm90
