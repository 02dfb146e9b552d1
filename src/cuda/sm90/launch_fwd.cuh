// Definition of the sm_90a forward launchers (declared in launch_fwd.hpp): checks what TMA needs,
// raises the kernel's shared-memory limit once per device (device_info.hpp), encodes the tensor
// maps of Q, K and V (tma_map.hpp), zeroes the launch's tile counter (tile_scheduler_fwd.cuh) and
// launches kernel_fwd.cuh's kernel on a persistent grid of min(#SMs, tiles) CTAs: the compiled
// one of a score mod, or one linked at run time (launch_fwd_linked). Included only by the
// instantiation files sm90/fwd_*.cu.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "api/message.hpp"
#include "cuda/cuda_check.hpp"
#include "cuda/device_info.hpp"
#include "cuda/element_type.cuh"
#include "cuda/sm90/kernel_fwd.cuh"
#include "cuda/sm90/launch_fwd.hpp"
#include "cuda/tma_map.hpp"

namespace flashflex::sm90 {

namespace detail {

// Launches `kernel`, fwd_kernel<Traits, ...> for this dtype and head dim: compiled in, or the
// one kernel of a linked cubin (a cudaKernel_t, which the runtime takes where a function is).
template <DType kDType, int kHeadDim>
void launch_fwd_kernel(const void* kernel, const cuda::FwdParams& p, void* stream) {
  using Traits = typename FwdConfig<cuda::element_t<kDType>, kHeadDim>::Traits;
  constexpr int kSmem = Traits::kSmemBytes;
  for (const auto& [name, t] : {std::pair<const char*, const cuda::TensorView*>{"q", &p.q}, {"k", &p.k}, {"v", &p.v}}) {
    if (!cuda::tma_can_map(t->data, t->stride_t, t->stride_h, t->stride_b)) {
      throw Error(ErrorKind::kUnsupported, flashflex::detail::concat(
                                               name, ": the sm90 forward needs 16-byte aligned data and strides (TMA)"));
    }
  }
  if (p.mask.present && reinterpret_cast<std::uintptr_t>(p.mask.bitmaps) % 16 != 0) {
    throw Error(ErrorKind::kUnsupported, "block_mask: the sm90 forward needs 16-byte aligned bitmaps");
  }
  const int device = cuda::current_device();
  cuda::prepare_kernel_smem(kernel, kSmem, device, "the sm90 forward", kHeadDim);

  const int64_t tiles = static_cast<int64_t>(p.num_q_tiles) * p.batch * p.q_heads;
  if (tiles == 0) return;
  const int sms = cuda::device_info(device).sm_count;
  if (tiles > (int64_t{1} << 31) - 1 - sms) {  // tile indices run to tiles + grid
    throw Error(ErrorKind::kUnsupported, "q: the sm90 forward needs batch * heads * q tiles < 2^31 - #SMs");
  }
  constexpr bool kBf16 = kDType == DType::kBFloat16;
  const int kv_heads = p.q_heads / p.kv_group;
  CUtensorMap map_q, map_k, map_v;
  cuda::encode_bhtd_map(&map_q, "q", p.q, kBf16, kHeadDim, p.q_len, p.q_heads, p.batch, Traits::kBlockM);
  cuda::encode_bhtd_map(&map_k, "k", p.k, kBf16, kHeadDim, p.kv_len, kv_heads, p.batch, Traits::kBlockN);
  cuda::encode_bhtd_map(&map_v, "v", p.v, kBf16, kHeadDim, p.kv_len, kv_heads, p.batch, Traits::kBlockN);
  const int grid = static_cast<int>(tiles < sms ? tiles : sms);
  cuda::FwdParams args = p;
  if (!Traits::kDynamicTiles) args.tile_counter = nullptr;
  if (args.tile_counter != nullptr) {
    FLASHFLEX_CUDA_CHECK(
        cudaMemsetAsync(args.tile_counter, 0, sizeof(*args.tile_counter), static_cast<cudaStream_t>(stream)));
  }
  void* kernel_args[] = {&args, &map_q, &map_k, &map_v};
  // Checked through cudaGetLastError, which also clears a failed launch's error (as after <<<>>>).
  (void)cudaLaunchKernel(kernel, dim3(grid), dim3(Traits::kNumThreads), kernel_args, kSmem,
                         static_cast<cudaStream_t>(stream));
  FLASHFLEX_CUDA_CHECK(cudaGetLastError());
}

}  // namespace detail

template <DType kDType, int kHeadDim, ScoreModKind kMod, bool kRowLocal>
void launch_fwd(const cuda::FwdParams& p, void* stream) {
  using Traits = typename FwdConfig<cuda::element_t<kDType>, kHeadDim>::Traits;
  detail::launch_fwd_kernel<kDType, kHeadDim>(reinterpret_cast<const void*>(fwd_kernel<Traits, kMod, kRowLocal>), p,
                                              stream);
}

template <DType kDType, int kHeadDim>
void launch_fwd_linked(const cuda::FwdParams& p, const void* kernel, void* stream) {
  detail::launch_fwd_kernel<kDType, kHeadDim>(kernel, p, stream);
}

}  // namespace flashflex::sm90
