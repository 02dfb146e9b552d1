// Thin PTX wrappers over cp.async (sm_80+): 16-byte global -> shared copies that skip L1 and
// zero-fill when predicated off, and the commit / wait-group protocol. Shared by the sm80
// forward (src/cuda/sm80/mainloop_fwd.cuh) and backward; keep the signatures stable.
#pragma once

#include <cstdint>

namespace flashflex::ptx {

// The 32-bit shared-memory address (state space .shared) of a generic pointer into shared memory.
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Copies 16 bytes from global `src` to shared `dst` (both 16-byte aligned). With `valid` false
// nothing is read (src may then be any mapped address) and the 16 bytes are zero-filled.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
               : "memory");
}

// 4 or 8 bytes global -> shared through L1 (bitmap rows, row statistics, small vectors); both
// addresses aligned to the size. With `valid` false nothing is read and the bytes are zeroed.
__device__ __forceinline__ void cp_async_4(uint32_t dst, const void* src, bool valid) {
  const int src_bytes = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
               : "memory");
}

__device__ __forceinline__ void cp_async_8(uint32_t dst, const void* src, bool valid) {
  const int src_bytes = valid ? 8 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
               : "memory");
}

// Closes the group of cp.async issued by this thread since the last commit (possibly empty).
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most kPending of this thread's committed groups are still in flight. The data
// is then visible to this thread only: a barrier (__syncthreads) publishes it to the others.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

}  // namespace flashflex::ptx
