// Thin PTX wrappers over the sm_90 bulk asynchronous copies used by the backward's dQ
// writer (src/cuda/common/dq_writer.cuh): an fp32 add of a shared-memory box into a 2-d
// global tensor (described by a CUtensorMap) performed by the copy engine (TMA) instead of
// per-thread reductions through the LSU, its bulk-group commit / wait protocol, and the proxy
// fence that makes ordinary shared stores visible to it. Only for code compiled for sm_90+ (the
// callers guard their uses).
#pragma once

#include <cstdint>

namespace flashflex::ptx {

// tensor[row .. row + box rows, col .. col + box cols] += the box at `smem` (fp32, laid out as the
// map's box and swizzle say). `map`: a CUtensorMap in kernel-parameter, constant or global memory.
__device__ __forceinline__ void bulk_tensor_reduce_add_2d(const void* map, uint32_t smem, int col, int row) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.2d.global.shared::cta.add.tile.bulk_group [%0, {%1, %2}], [%3];\n" ::"l"(
          reinterpret_cast<uint64_t>(map)),
      "r"(col), "r"(row), "r"(smem)
      : "memory");
}

__device__ __forceinline__ void st_shared_f32x2(uint32_t addr, float a, float b) {
  asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(addr), "f"(a), "f"(b) : "memory");
}

__device__ __forceinline__ void bulk_commit_group() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }

// The bulk copies of this thread have finished reading shared memory (their source may be reused).
__device__ __forceinline__ void bulk_wait_read_all() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }
// ... all but the kPending most recently committed groups.
template <int kPending>
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(kPending) : "memory");
}

// The bulk copies of this thread are complete (their writes performed).
__device__ __forceinline__ void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }

// Orders this thread's earlier shared-memory stores before later bulk copies that read them.
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
}  // namespace flashflex::ptx
