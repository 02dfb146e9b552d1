// Thin PTX wrappers over the sm_90 copy engine (TMA) for loads into shared memory that complete
// on an mbarrier (mbarrier.cuh): a 4-d tiled tensor box described by a CUtensorMap (built on the
// host, src/cuda/tma_map.hpp) and a plain contiguous bulk copy. Out-of-bounds box elements are
// written as zeros and still count toward the transaction bytes.
#pragma once

#include <cstdint>

namespace flashflex::ptx {

// `map`: the generic address of a CUtensorMap kernel parameter (__grid_constant__).
__device__ __forceinline__ void tma_prefetch_map(const void* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// L2 eviction priorities for the cache-hinted loads below (createpolicy: fraction 1.0).
__device__ __forceinline__ uint64_t l2_policy_evict_last() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}
__device__ __forceinline__ uint64_t l2_policy_evict_first() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}

// The box of `map` at coordinates (c0 innermost .. c3) into shared memory at `dst`, completing on
// the mbarrier `bar`, with an L2 cache policy (l2_policy_*).
__device__ __forceinline__ void tma_load_4d_hint(uint32_t dst, const void* map, uint32_t bar, int c0, int c1, int c2,
                                                 int c3, uint64_t policy) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1, "
      "{%3, %4, %5, %6}], [%2], %7;\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "l"(policy)
      : "memory");
}

// `bytes` (a multiple of 16; src and dst 16-byte aligned) from global to shared memory.
__device__ __forceinline__ void bulk_load(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(src)), "r"(bytes), "r"(bar)
      : "memory");
}

}  // namespace flashflex::ptx
