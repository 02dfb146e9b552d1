// The shared-memory map and the mbarrier rings of the sm_90 forward (kernel_traits_fwd.cuh holds
// the offsets). Barriers, with their arrival counts:
//   q_full        1 (producer's expect_tx) + Q's TMA bytes       consumers wait, once per tile
//   q_empty       every consumer thread, after its last Q K^T     producer waits before the next Q
//   k_full[s]     1 + K's (and a partial step's bitmap) bytes     consumers wait before Q K^T
//   k_empty[s]    every consumer thread, after Q K^T and the mask producer waits before refilling
//   v_full[s], v_empty[s]  the same for V, released after P V.
//   tile_full[i]  1 (the feed thread, after storing tile index i) loader and consumers wait
//   tile_empty[i] the loader and every consumer thread, once read the feed waits before reuse
// The rings are walked with PipeState (pipe_state.cuh).
#pragma once

#include <cstdint>

#include "cuda/ptx/mbarrier.cuh"
#include "cuda/sm90/pipe_state.cuh"
#include "cuda/sm90/tile_scheduler_fwd.cuh"

namespace flashflex::sm90 {

template <class Traits>
struct SmemFwd {
  uint32_t base;  // shared-space address, 1 KiB aligned
  const unsigned char* ptr;  // the same bytes as a generic pointer (bitmap reads)

  __device__ uint32_t q() const { return base + Traits::kQOff; }
  __device__ uint32_t k(int s) const { return base + Traits::kKOff + s * Traits::kKVBytes; }
  __device__ uint32_t v(int s) const { return base + Traits::kVOff + s * Traits::kKVBytes; }
  __device__ uint32_t bits(int s) const { return base + Traits::kBitsOff + s * Traits::kBitsBytes; }
  __device__ const uint32_t* bits_ptr(int s) const {
    return reinterpret_cast<const uint32_t*>(ptr + Traits::kBitsOff + s * Traits::kBitsBytes);
  }
  __device__ uint32_t bar(int i) const { return base + Traits::kBarOff + 8 * i; }
  __device__ uint32_t q_full() const { return bar(0); }
  __device__ uint32_t q_empty() const { return bar(1); }
  __device__ uint32_t k_full(int s) const { return bar(2 + s); }
  __device__ uint32_t k_empty(int s) const { return bar(2 + Traits::kStages + s); }
  __device__ uint32_t v_full(int s) const { return bar(2 + 2 * Traits::kStages + s); }
  __device__ uint32_t v_empty(int s) const { return bar(2 + 3 * Traits::kStages + s); }
  __device__ uint32_t tile_full(int i) const { return bar(2 + 4 * Traits::kStages + i); }
  __device__ uint32_t tile_empty(int i) const { return bar(4 + 4 * Traits::kStages + i); }
  __device__ FwdTileChannel tile_channel() const {
    return {base + Traits::kTileSlotsOff, tile_full(0), tile_empty(0)};
  }

  // One thread, before the CTA barrier that precedes every use.
  __device__ void init_barriers() const {
    ptx::mbar_init(q_full(), 1);
    ptx::mbar_init(q_empty(), Traits::kConsumerThreads);
    for (int s = 0; s < Traits::kStages; ++s) {
      ptx::mbar_init(k_full(s), 1);
      ptx::mbar_init(k_empty(s), Traits::kConsumerThreads);
      ptx::mbar_init(v_full(s), 1);
      ptx::mbar_init(v_empty(s), Traits::kConsumerThreads);
    }
    for (int i = 0; i < 2; ++i) {
      ptx::mbar_init(tile_full(i), 1);
      ptx::mbar_init(tile_empty(i), Traits::kConsumerThreads + 1);  // used by the dynamic order only
    }
    ptx::fence_mbar_init();
  }
};

}  // namespace flashflex::sm90
