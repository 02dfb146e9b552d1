// Global-memory atomics of the backward's dQ writer (src/cuda/common/dq_writer.cuh):
//   red_add_f32x2: fire-and-forget fp32 reduction into the dQ accumulator. atomicAdd on a float2
//     compiles to ATOMG (it returns the old value, so the warp holds the destination registers
//     until L2 answers); red never answers. sm_90: one 8-byte REDG.ADD.F32x2; sm_80: two RED.F32.
//   ld_acquire_gpu: the semaphore read of deterministic mode (pairs with a release by
//     __threadfence + atomicExch in the CTA that publishes).
#pragma once

namespace flashflex::ptx {

// addr[0] += a, addr[1] += b (addr 8-byte aligned, global memory; relaxed, gpu scope).
__device__ __forceinline__ void red_add_f32x2(float* addr, float a, float b) {
#if __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(addr), "f"(a), "f"(b));
#else
  asm volatile(
      "red.global.add.f32 [%0], %1;\n"
      "red.global.add.f32 [%0+4], %2;\n" ::"l"(addr),
      "f"(a), "f"(b)
      );
#endif
}

__device__ __forceinline__ int ld_acquire_gpu(const int* addr) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(addr) : "memory");
  return v;
}

}  // namespace flashflex::ptx
