// The data movement and the five products of the sm_90 backward:
//   ProducerBwd::run   one thread: K and V of the CTA's kv tile once, then, along the q walk
//                      (common/q_walk.cuh), per step: its description, Q, dO (TMA), LSE2, dpsum
//                      and a partial step's bitmap rows (bulk copies) into the next stage
//   GemmBwd            S^T = K Q^T and dP^T = V dO^T (SS), dV += P^T dO and dK += dS^T Q (RS,
//                      the B operand N-major), dQ = dS K (SS, both operands MN-major), and the
//                      fp32 -> 16-bit packing of P^T / dS^T into RS A fragments (the tile products
//                      of wgmma_tiles.cuh)
// The consumer schedule is kernel_bwd.cuh's.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "cuda/common/q_walk.cuh"
#include "cuda/params.hpp"
#include "cuda/ptx/mbarrier.cuh"
#include "cuda/ptx/tma.cuh"
#include "cuda/ptx/wgmma.cuh"
#include "cuda/sm90/pipeline_bwd.cuh"
#include "cuda/sm90/wgmma_tiles.cuh"
#include "flashflex/block_mask.hpp"

namespace flashflex::sm90 {

// K and V are read once per CTA and Q, dO by every kv tile of their rows: Q and dO ask L2 to keep
// their lines, K and V to drop theirs.
template <class Traits>
struct ProducerBwd {
  using Smem = SmemBwd<Traits>;
  using Pipe = PipeState<Traits::kStages>;
  using Walk = cuda::QWalk<Traits::kBlockM>;

  __device__ static void run(const cuda::BwdParams& p, const CUtensorMap* map_q, const CUtensorMap* map_k,
                             const CUtensorMap* map_v, const CUtensorMap* map_do, const Smem& s, int kv_head,
                             int split, int kv_tile, int b) {
    ptx::tma_prefetch_map(map_q);
    ptx::tma_prefetch_map(map_do);
    const uint64_t keep = ptx::l2_policy_evict_last(), drop = ptx::l2_policy_evict_first();
    {
      const int n0 = kv_tile * Traits::kBlockN;
      ptx::mbar_arrive_expect_tx(s.kv_full(), 2 * Traits::kKVBytes);
#pragma unroll
      for (int c = 0; c < Traits::kColBlocks; ++c) {
        ptx::tma_load_4d_hint(s.k() + c * Traits::kKVBlockBytes, map_k, s.kv_full(), c * 64, n0, kv_head, b, drop);
        ptx::tma_load_4d_hint(s.v() + c * Traits::kKVBlockBytes, map_v, s.kv_full(), c * 64, n0, kv_head, b, drop);
      }
    }
    cuda::QWalkState w;
    Walk::start(w, kv_head * p.group + split * p.heads_per_cta, p.rows.valid_rows(b, p.q_len));
    Pipe st;
    cuda::BwdStep step = next_step(p, w, kv_tile, b);
    for (;;) {
      // One step of look-ahead: whether `step` is the last of its q tile (deterministic mode).
      cuda::BwdStep after;
      after.valid = 0;
      if (step.valid) after = next_step(p, w, kv_tile, b);
      ptx::mbar_wait(s.empty(st.stage), st.phase ^ 1);
      StepSlot* slot = s.slot(st.stage);
      slot->valid = step.valid;
      slot->partial = step.partial;
      slot->hq = step.hq;
      slot->q_tile = step.q_tile;
      slot->m0 = step.m0;
      slot->ws_row = static_cast<int>(step.ws_row);
      slot->ends_q_tile = !after.valid || after.hq != step.hq || after.q_tile != step.q_tile;
      // CTAs of higher kv tiles add into the q tile first (bwd/dq_order.cuh; the grid runs kv
      // tiles in reverse then, so that every CTA waited for has started).
      slot->dq_rank = !p.deterministic || !step.valid ? 0
                      : p.mask.present
                          ? __ldg(p.dq_rank + (static_cast<int64_t>(step.mask_bh) * p.num_kv_tiles + kv_tile) *
                                                  p.num_q_tiles + step.q_tile)
                          : p.num_kv_tiles - 1 - kv_tile;
      const uint32_t bar = s.full(st.stage);
      if (!step.valid) {
        ptx::mbar_arrive(bar);  // publishes the end of the walk
        return;
      }
      const uint32_t* bitmap = nullptr;
      if (step.partial) {
        const int64_t tile_idx =
            (static_cast<int64_t>(step.mask_bh) * p.num_q_tiles + step.q_tile) * p.num_kv_tiles + kv_tile;
        bitmap = p.mask.bitmaps + static_cast<int64_t>(__ldg(p.mask.partial_tile_ids + tile_idx)) * kBitmapWords +
                 (step.m0 % kTileSize) * kBitmapWordsPerRow;
      }
      ptx::mbar_arrive_expect_tx(bar, 2 * Traits::kQBytes + Traits::kStatBytes +
                                          (bitmap != nullptr ? Traits::kBitsBytes : 0u));
#pragma unroll
      for (int c = 0; c < Traits::kColBlocks; ++c) {
        ptx::tma_load_4d_hint(s.q(st.stage) + c * Traits::kQBlockBytes, map_q, bar, c * 64, step.m0, step.hq, b, keep);
        ptx::tma_load_4d_hint(s.dout(st.stage) + c * Traits::kQBlockBytes, map_do, bar, c * 64, step.m0, step.hq, b,
                              keep);
      }
      // Workspace rows are padded to 128: the statistics of a ragged step need no bounds.
      ptx::bulk_load(s.stats(st.stage), p.lse2 + step.ws_row, Traits::kBlockM * 4, bar);
      ptx::bulk_load(s.stats(st.stage) + Traits::kBlockM * 4, p.dpsum + step.ws_row, Traits::kBlockM * 4, bar);
      if (bitmap != nullptr) ptx::bulk_load(s.bits(st.stage), bitmap, Traits::kBitsBytes, bar);
      st.advance();
      step = after;
    }
  }

  // The walk's next step; its list fetch is a blocking load (the producer runs stages ahead).
  __device__ static cuda::BwdStep next_step(const cuda::BwdParams& p, cuda::QWalkState& w, int kv_tile, int b) {
    cuda::BwdStep step;
    int side = 0;
    const int32_t* fetch = Walk::next(w, p, b, kv_tile, step, side);
    if (fetch != nullptr) {  // the list entry the next call reads (QWalk::next's contract)
      const int entry = __ldg(fetch);
      if (side == 0) {
        w.next_entry[0] = entry;
      } else {
        w.next_entry[1] = entry;
      }
    }
    return step;
  }
};

template <class Traits>
struct GemmBwd {
  using Element = typename Traits::Element;
  static constexpr int kKSteps = Traits::kKSteps;

  // acc (=) A_rows B^T over the head dim: A = the warpgroup's 64 rows of a K or V tile, B = a Q
  // or dO stage (kBlockM rows); both K-major. Issue only (the caller commits).
  __device__ static void gemm_t(float (&acc)[Traits::kNTilesS * 4], uint32_t kv_tile, uint32_t q_tile, int wg_row0) {
    gemm_ss_kmajor<Element, Traits::kBlockM, Traits::kHeadDim>(acc, kv_tile + wg_row0 * 128, Traits::kKVBlockBytes,
                                                               q_tile, Traits::kQBlockBytes);
  }

  // acc += A B: A = P^T or dS^T fragments (k = the step's q rows), B = a dO or Q stage
  // [kBlockM rows][D] (N-major).
  __device__ static void gemm_acc(float (&acc)[Traits::kNTilesKV * 4], const uint32_t (&a)[kKSteps][4],
                                  uint32_t q_tile) {
    gemm_rs_nmajor<Element, Traits::kHeadDim, kKSteps>(acc, a, q_tile, Traits::kQBlockBytes);
  }

  // acc = dS K for the columns dq_col0 .. + kDqCols of the step's dQ: A = the dS^T tile
  // [128 keys][64 q rows] (MN-major), B = K [128 keys][D] (N-major, from column dq_col0: the
  // swizzle applies to the address bits, so a start inside a 128-byte row is a plain offset);
  // k = the 128 keys.
  __device__ static void gemm_dq(float (&acc)[Traits::kDqCols / 2], uint32_t ds_tile, uint32_t k_tile, int dq_col0) {
    const uint64_t a0 = ptx::gmma_desc_sw128(ds_tile, Traits::kDsBytes, 1024);
    const uint64_t b0 = ptx::gmma_desc_sw128(k_tile + (dq_col0 / 64) * Traits::kKVBlockBytes + (dq_col0 % 64) * 2,
                                             Traits::kKVBlockBytes, 1024);
    ptx::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < Traits::kBlockN / 16; ++kk) {
      const uint64_t step = (kk * 16 * 128) >> 4;
      ptx::wgmma_ss_tt<Element, Traits::kDqCols>(acc, a0 + step, b0 + step, kk > 0 ? 1 : 0);
    }
  }

  __device__ static void pack(uint32_t (&a)[kKSteps][4], const float (&acc)[Traits::kNTilesS * 4]) {
    pack_a<Element, kKSteps>(a, acc);
  }
};

}  // namespace flashflex::sm90
