// The dQ writer of the sm_90 backward: warp 1 of the producer warpgroup hands each consumer
// warpgroup's staged dQ columns to the copy engine (bulk tensor reduce-add into the fp32
// workspace), so the consumers never wait on the copy engine or, in deterministic mode, on
// another CTA's turn (FlashAttention-3's and -4's dQ writer). Per step and consumer warpgroup w:
//   consumers: bar.sync  kBarDqEmpty + w  (the writer has read their previous staging tile)
//              stage dQ; fence.proxy.async; bar.arrive kBarDqFull + w
//   writer:    bar.sync  kBarDqFull + w; lane 0 issues the adds; once they have read the tile,
//              bar.arrive kBarDqEmpty + w
// 160 threads per barrier (a consumer warpgroup and the writer warp). The writer reads the
// step's description from the stage itself (full barrier) and counts on the stage's empty
// barrier, so the producer keeps the description until the writer has it.
#pragma once

#include <cstdint>

#include "cuda/params.hpp"
#include "cuda/ptx/atomics_bwd.cuh"
#include "cuda/ptx/barrier.cuh"
#include "cuda/ptx/bulk_reduce.cuh"
#include "cuda/ptx/mbarrier.cuh"
#include "cuda/sm90/pipeline_bwd.cuh"

namespace flashflex::sm90 {

// Named barriers (id 0 is __syncthreads; kernel_bwd.cuh's kBarDs is 1).
constexpr int kBarDqFull = 2;   // + consumer warpgroup
constexpr int kBarDqEmpty = 4;  // + consumer warpgroup
constexpr int kDqBarThreads = 128 + 32;

// Deterministic mode: the CTAs that add into one (batch, head, q tile) of dQ take turns in
// descending kv order (rank from the producer's StepSlot), so every element's fp32 sum has one
// order. The semaphore counts warpgroups' columns (two per CTA): rank r waits for 2 r. The writer
// publishes one step late, just before its next adds (or at the end), when the copy engine has
// long performed the adds: bulk_wait_all then costs nothing, where publishing at once stalled
// for the adds' round trip. The turns stay a wavefront: a CTA holds back only q tiles that CTAs
// of lower kv tiles wait for.
struct DqTurns {
  int pending = -1;  // the semaphore (index) of the q tile added into and not yet published

  __device__ void publish(int32_t* sems) {
    if (pending < 0) return;
    ptx::bulk_wait_all();  // the adds are performed
    asm volatile("fence.proxy.async.global;\n" ::: "memory");
    __threadfence();
    atomicAdd(sems + pending, 2);  // both warpgroups' columns
    pending = -1;
  }
  __device__ static void wait(const int32_t* sem, int rank) {
    while (ptx::ld_acquire_gpu(sem) < 2 * rank) {
    }
    asm volatile("fence.proxy.async.global;\n" ::: "memory");  // the acquire, before the copy engine's adds
  }
};

template <class Traits>
struct DqWriterBwd {
  // The whole writer warp (the named barriers count its 32 threads); lane 0 issues.
  __device__ static void run(const cuda::BwdParams& p, const SmemBwd<Traits>& s, int b, int lane) {
    static_assert(Traits::kConsumerWGs == 2, "one full / empty barrier pair per consumer warpgroup");
    // Both staging tiles start empty.
    ptx::named_bar_arrive(kBarDqEmpty + 0, kDqBarThreads);
    ptx::named_bar_arrive(kBarDqEmpty + 1, kDqBarThreads);
    PipeState<Traits::kStages> st;
    DqTurns turns;
    for (;;) {
      ptx::mbar_wait(s.full(st.stage), st.phase);
      // Lane 0 alone reads the description (the only reader, so its arrival on the empty
      // barrier orders every read before the producer's next write), the others learn `valid`.
      int valid = 0, ws_row = 0, rank = 0, ends_q_tile = 0, sem = 0;
      if (lane == 0) {
        const StepSlot* slot = s.slot(st.stage);
        valid = slot->valid;
        if (valid) {
          ws_row = slot->ws_row;
          rank = slot->dq_rank;
          ends_q_tile = slot->ends_q_tile;
          sem = (b * p.q_heads + slot->hq) * p.num_q_tiles + slot->q_tile;  // < 2^31: bwd_unsupported
          ptx::mbar_arrive(s.empty(st.stage));
        }
      }
      if (!__shfl_sync(~0u, valid, 0)) break;
      st.advance();
      if (lane == 0 && p.deterministic) {
        turns.publish(p.dq_semaphore);
        DqTurns::wait(p.dq_semaphore + sem, rank);
        if (ends_q_tile) turns.pending = sem;
      }
      __syncwarp();  // bar.sync is warp-aligned: the lanes meet again after lane 0's turn
#pragma unroll
      for (int cwg = 0; cwg < 2; ++cwg) {
        ptx::named_bar_sync(kBarDqFull + cwg, kDqBarThreads);
        if (lane == 0) {
#pragma unroll
          for (int c = 0; c < Traits::kDqBoxes; ++c) {
            ptx::bulk_tensor_reduce_add_2d(&p.dq_map, s.dq(cwg) + c * Traits::kDqBoxBytes,
                                           cwg * Traits::kDqCols + 32 * c, ws_row);
          }
          ptx::bulk_commit_group();
        }
        __syncwarp();
      }
      // Warpgroup 0's tile is free once its group has been read, warpgroup 1's after that.
      if (lane == 0) ptx::bulk_wait_read<1>();
      __syncwarp();
      ptx::named_bar_arrive(kBarDqEmpty + 0, kDqBarThreads);
      if (lane == 0) ptx::bulk_wait_read<0>();
      __syncwarp();
      ptx::named_bar_arrive(kBarDqEmpty + 1, kDqBarThreads);
    }
    if (lane == 0) {
      turns.publish(p.dq_semaphore);
      ptx::bulk_wait_all();  // shared memory outlives the last dQ adds
    }
  }
};

}  // namespace flashflex::sm90
