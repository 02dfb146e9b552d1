// Thin PTX wrappers for warp-specialized kernels (sm_90a): named CTA barriers (bar.sync /
// bar.arrive on ids 1..15; id 0 is __syncthreads) and setmaxnreg, which moves registers between
// warpgroups (producer gives, consumers take; per-thread counts, multiples of 8 in [24, 256]).
#pragma once

#include <cstdint>

namespace flashflex::ptx {

__device__ __forceinline__ void named_bar_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_bar_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

}  // namespace flashflex::ptx
