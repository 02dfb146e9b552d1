// Definition of the sm80 forward launchers (declared in launch_fwd.hpp): checks the device's
// shared memory, raises the kernel's limit once per device (device_info.hpp) and launches
// kernel_fwd.cuh's kernel, one CTA per (kBlockM rows of q, q head, batch), heaviest q blocks
// first: the compiled one of a score mod, or one linked at run time (launch_fwd_linked). Included
// only by the instantiation files sm80/fwd_*.cu.
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

namespace detail {

// Launches `kernel`, fwd_kernel<Traits, kMod, ...> of FwdConfig's traits for kMod: compiled in,
// or the one kernel of a linked cubin (a cudaKernel_t, which the runtime takes where a function is).
template <class Traits>
void launch_fwd_kernel(const void* kernel, const cuda::FwdParams& params, void* stream) {
  constexpr int kSmem = Traits::kSmemBytes;
  const int device = cuda::current_device();
  cuda::prepare_kernel_smem(kernel, kSmem, device, "the CUDA forward", Traits::kHeadDim);

  const int64_t blocks =
      static_cast<int64_t>(params.num_q_tiles) * Traits::kMBlocksPerTile * params.batch * params.q_heads;
  if (blocks > std::numeric_limits<int32_t>::max()) {
    throw Error(ErrorKind::kUnsupported,
                flashflex::detail::concat("q: the CUDA forward needs batch * heads * ceil(q_len / ", Traits::kBlockM,
                                          ") < 2^31 CTAs, got ", blocks));
  }
  cuda::FwdParams args = params;
  void* kernel_args[] = {&args};
  // Checked through cudaGetLastError, which also clears a failed launch's error (as after <<<>>>).
  (void)cudaLaunchKernel(kernel, dim3(static_cast<unsigned>(blocks)), dim3(Traits::kNumThreads), kernel_args, kSmem,
                         static_cast<cudaStream_t>(stream));
  FLASHFLEX_CUDA_CHECK(cudaGetLastError());
}

}  // namespace detail

template <DType kDType, int kHeadDim, ScoreModKind kMod, bool kRowLocal>
void launch_fwd(const cuda::FwdParams& params, void* stream) {
  using Traits = typename FwdConfig<cuda::element_t<kDType>, kHeadDim, kMod>::Traits;
  detail::launch_fwd_kernel<Traits>(reinterpret_cast<const void*>(fwd_kernel<Traits, kMod, kRowLocal>), params,
                                    stream);
}

template <DType kDType, int kHeadDim>
void launch_fwd_linked(const cuda::FwdParams& params, const void* kernel, void* stream) {
  using Traits = typename FwdConfig<cuda::element_t<kDType>, kHeadDim, ScoreModKind::kLinked>::Traits;
  detail::launch_fwd_kernel<Traits>(kernel, params, stream);
}

}  // namespace flashflex::sm80
