// Definition of the sm80 forward launchers (declared in launch_fwd.hpp): checks the device's
// shared memory, raises the kernel's limit once per device (device_info.hpp) and launches
// kernel_fwd.cuh's kernel, one CTA per (kBlockM rows of q, q head, batch), heaviest q blocks
// first. Included only by the instantiation files sm80/fwd_*.cu.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

#include "api/message.hpp"
#include "cuda/cuda_check.hpp"
#include "cuda/device_info.hpp"
#include "cuda/element_type.cuh"
#include "cuda/sm80/kernel_fwd.cuh"
#include "cuda/sm80/launch_fwd.hpp"

namespace flashflex::sm80 {

template <DType kDType, int kHeadDim, ScoreModKind kMod, bool kRowLocal>
void launch_fwd(const cuda::FwdParams& params, void* stream) {
  using Traits = typename FwdConfig<cuda::element_t<kDType>, kHeadDim, kMod>::Traits;
  constexpr int kSmem = Traits::kSmemBytes;
  auto kernel = fwd_kernel<Traits, kMod, kRowLocal>;
  const int device = cuda::current_device();
  cuda::prepare_kernel_smem(reinterpret_cast<const void*>(kernel), kSmem, device, "the CUDA forward", kHeadDim);

  const int64_t blocks =
      static_cast<int64_t>(params.num_q_tiles) * Traits::kMBlocksPerTile * params.batch * params.q_heads;
  if (blocks > std::numeric_limits<int32_t>::max()) {
    throw Error(ErrorKind::kUnsupported,
                flashflex::detail::concat("q: the CUDA forward needs batch * heads * ceil(q_len / ", Traits::kBlockM,
                                          ") < 2^31 CTAs, got ", blocks));
  }
  kernel<<<static_cast<unsigned>(blocks), Traits::kNumThreads, kSmem, static_cast<cudaStream_t>(stream)>>>(params);
  FLASHFLEX_CUDA_CHECK(cudaGetLastError());
}

}  // namespace flashflex::sm80
