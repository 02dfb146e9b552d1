// The shared-memory map and the mbarriers of the sm_90 backward (kernel_traits_bwd.cuh holds the
// offsets). Barriers, with their arrival counts:
//   kv_full       1 (producer's expect_tx) + K's and V's TMA bytes   consumers wait once
//   full[s]       1 + the stage's bytes: Q, dO, LSE2, dpsum and, for a partial step, its bitmap
//                 rows; the producer writes the step's description (StepSlot; step.valid = 0:
//                 the walk is over, no bytes) before its arrival, which publishes it
//   empty[s]      every consumer thread, after the step's last product, and the dQ writer
//                 (dq_writer_bwd.cuh) once it has read the description   producer waits
// Stages are walked with PipeState (pipe_state.cuh).
#pragma once

#include <cstdint>

#include "cuda/common/q_walk.cuh"
#include "cuda/ptx/mbarrier.cuh"
#include "cuda/sm90/pipe_state.cuh"

namespace flashflex::sm90 {

// A stage's step description: the fields of the walk's step the consumers read (cuda::BwdStep's
// element offsets are the sm80 kernel's; TMA takes coordinates) and, for deterministic mode, this
// CTA's turn among the CTAs that add into the step's q tile of dQ and whether the step is the
// CTA's last one in that q tile.
struct StepSlot {
  int valid;    // 0: the walk is over
  int partial;  // the step's tile has a bitmap (its rows travel with the stage)
  int hq, q_tile, m0;
  int ws_row;   // the step's first workspace row (LSE2, dpsum, dQ accumulator)
  int dq_rank;
  int ends_q_tile;
};

template <class Traits>
struct SmemBwd {
  uint32_t base;             // shared-space address, 1 KiB aligned
  unsigned char* ptr;        // the same bytes as a generic pointer

  __device__ uint32_t k() const { return base + Traits::kKOff; }
  __device__ uint32_t v() const { return base + Traits::kVOff; }
  __device__ uint32_t q(int s) const { return base + Traits::kQOff + s * Traits::kQBytes; }
  __device__ uint32_t dout(int s) const { return base + Traits::kDoOff + s * Traits::kQBytes; }
  __device__ uint32_t ds(int buf) const { return base + Traits::kDsOff + buf * Traits::kDsBytes; }
  __device__ uint32_t dq(int cwg) const { return base + Traits::kDqOff + cwg * Traits::kDqWGBytes; }
  __device__ uint32_t stats(int s) const { return base + Traits::kStatOff + s * Traits::kStatBytes; }
  __device__ uint32_t bits(int s) const { return base + Traits::kBitsOff + s * Traits::kBitsBytes; }
  __device__ const float* lse2_ptr(int s) const {
    return reinterpret_cast<const float*>(ptr + Traits::kStatOff + s * Traits::kStatBytes);
  }
  __device__ const float* dpsum_ptr(int s) const { return lse2_ptr(s) + Traits::kBlockM; }
  __device__ const uint32_t* bits_ptr(int s) const {
    return reinterpret_cast<const uint32_t*>(ptr + Traits::kBitsOff + s * Traits::kBitsBytes);
  }
  __device__ StepSlot* slot(int s) const {
    return reinterpret_cast<StepSlot*>(ptr + Traits::kStepOff + s * Traits::kStepBytes);
  }
  __device__ uint32_t bar(int i) const { return base + Traits::kBarOff + 8 * i; }
  __device__ uint32_t kv_full() const { return bar(0); }
  __device__ uint32_t full(int s) const { return bar(1 + s); }
  __device__ uint32_t empty(int s) const { return bar(1 + Traits::kStages + s); }

  // One thread, before the CTA barrier that precedes every use.
  __device__ void init_barriers() const {
    ptx::mbar_init(kv_full(), 1);
    for (int s = 0; s < Traits::kStages; ++s) {
      ptx::mbar_init(full(s), 1);
      ptx::mbar_init(empty(s), Traits::kConsumerThreads + 1);
    }
    ptx::fence_mbar_init();
  }
};

static_assert(sizeof(StepSlot) <= 64, "a stage's step description slot");

}  // namespace flashflex::sm90
