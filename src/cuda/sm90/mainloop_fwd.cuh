// The data movement and the two products of the sm_90 forward:
//   ProducerFwd::run   one thread: for every tile of this CTA (tile_scheduler_fwd.cuh), Q once,
//                      then per kv step K (with a partial step's bitmap) and V, V one step
//                      behind K (the consumers need K_j before V_{j-1}); each load waits for
//                      its stage's empty barrier
//   gemm_qk            S = Q K^T, SS wgmma over the head dim (K-major A and B)
//   gemm_pv            O += P V, RS wgmma: P from registers, V N-major (transposed B)
//   pack_p             S fp32 accumulators -> P as 16-bit A fragments (no shared memory)
// (the tile products of wgmma_tiles.cuh)
// The consumer schedule (which wait, which release) is kernel_fwd.cuh's.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "cuda/ptx/mbarrier.cuh"
#include "cuda/ptx/tma.cuh"
#include "cuda/ptx/wgmma.cuh"
#include "cuda/common/kv_cursor.cuh"
#include "cuda/params.hpp"
#include "cuda/sm90/pipeline_fwd.cuh"
#include "cuda/sm90/tile_scheduler_fwd.cuh"
#include "cuda/sm90/wgmma_tiles.cuh"

namespace flashflex::sm90 {

// K and V loads ask L2 to keep their lines (every q head of the kv group and every later q tile
// reads them again), Q loads to drop theirs (read once): without these hints causal 16k took
// 3.90 ms instead of 3.54 (bench/NOTES.md).
// kRowLocal (EAGLE3): q tiles wholly past the sample's valid rows load nothing (the consumers
// test the same).
template <class Traits, bool kRowLocal>
struct ProducerFwd {
  using Smem = SmemFwd<Traits>;
  using Pipe = PipeState<Traits::kStages>;

  // The ring position of the g-th load of K (or of V).
  __device__ static Pipe ring_at(int g) {
    Pipe st;
    st.stage = g % Traits::kStages;
    st.phase = static_cast<uint32_t>(g / Traits::kStages) & 1;
    return st;
  }

  // Where the next K and V loads go. SplitRings: a PipeState each. CoupledRing, for the load
  // thread of the dynamic order, which has no register to spare (24 in all): V of a step is loaded
  // after K of the next, so both rings are level at every tile boundary and the count of K loads
  // (g) places both: K at g, V at g - 1 - k_ahead, where k_ahead counts the K loads of later
  // steps already made (1 inside a tile's loop, 0 for its last V).
  struct SplitRings {
    Pipe k, v;
    __device__ Pipe k_at() const { return k; }
    __device__ Pipe v_at(int) const { return v; }
    __device__ void k_loaded() { k.advance(); }
    __device__ void v_loaded() { v.advance(); }
  };
  struct CoupledRing {
    int g = 0;
    __device__ Pipe k_at() const { return ring_at(g); }
    __device__ Pipe v_at(int k_ahead) const { return ring_at(g - 1 - k_ahead); }
    __device__ void k_loaded() { ++g; }
    __device__ void v_loaded() {}
  };

  __device__ static void load_box(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int c1, int c2,
                                  int c3, bool keep) {
    ptx::tma_load_4d_hint(dst, map, bar, c0, c1, c2, c3,
                          keep ? ptx::l2_policy_evict_last() : ptx::l2_policy_evict_first());
  }

  __device__ static void load_k(const Smem& s, const CUtensorMap* map, const Pipe& st, int kv, int hkv, int b,
                                const uint32_t* bitmap) {
    ptx::mbar_wait(s.k_empty(st.stage), st.phase ^ 1);
    const uint32_t bar = s.k_full(st.stage);
    ptx::mbar_arrive_expect_tx(bar, Traits::kKVBytes + (bitmap != nullptr ? Traits::kBitsBytes : 0));
#pragma unroll
    for (int c = 0; c < Traits::kColBlocks; ++c) {
      load_box(s.k(st.stage) + c * Traits::kKVBlockBytes, map, bar, c * 64, kv, hkv, b, true);
    }
    if (bitmap != nullptr) ptx::bulk_load(s.bits(st.stage), bitmap, Traits::kBitsBytes, bar);
  }

  __device__ static void load_v(const Smem& s, const CUtensorMap* map, const Pipe& st, int kv, int hkv, int b) {
    ptx::mbar_wait(s.v_empty(st.stage), st.phase ^ 1);
    const uint32_t bar = s.v_full(st.stage);
    ptx::mbar_arrive_expect_tx(bar, Traits::kKVBytes);
#pragma unroll
    for (int c = 0; c < Traits::kColBlocks; ++c) {
      load_box(s.v(st.stage) + c * Traits::kKVBlockBytes, map, bar, c * 64, kv, hkv, b, true);
    }
  }

  // Q, then per kv step K (with a partial step's bitmap) and V of one tile; false for an empty
  // tile (nothing loaded: the consumers write zeros).
  template <class Rings>
  __device__ static bool load_tile(const cuda::FwdParams& p, const CUtensorMap* map_q, const CUtensorMap* map_k,
                                   const CUtensorMap* map_v, const Smem& s, const FwdTile& tile, uint32_t q_phase,
                                   Rings& rings) {
    cuda::KvStepCursor<Traits::kBlockN, false> cur(p, cuda::load_kv_list_head(p, tile.b, tile.h, tile.m));
    const int valid_rows = kRowLocal ? p.row_local.limit.valid_rows(tile.b, p.q_len) : p.q_len;
    if (!cur.valid() || tile.m * Traits::kBlockM >= valid_rows) return false;
    const int hkv = tile.hkv;
    ptx::mbar_wait(s.q_empty(), q_phase ^ 1);
    ptx::mbar_arrive_expect_tx(s.q_full(), Traits::kQBytes);
#pragma unroll
    for (int c = 0; c < Traits::kColBlocks; ++c) {
      load_box(s.q() + c * Traits::kQBlockBytes, map_q, s.q_full(), c * 64, tile.m * Traits::kBlockM, tile.h, tile.b,
               false);
    }
    int v_kv = -1;  // the step whose V is still to load
    for (; cur.valid(); cur.advance()) {
      const uint32_t* bitmap =
          cur.partial() ? p.mask.bitmaps + static_cast<int64_t>(cur.bitmap_id()) * kBitmapWords : nullptr;
      load_k(s, map_k, rings.k_at(), cur.kv_start(), hkv, tile.b, bitmap);
      rings.k_loaded();
      if (v_kv >= 0) {
        load_v(s, map_v, rings.v_at(1), v_kv, hkv, tile.b);
        rings.v_loaded();
      }
      v_kv = cur.kv_start();
    }
    load_v(s, map_v, rings.v_at(0), v_kv, hkv, tile.b);
    rings.v_loaded();
    return true;
  }

  __device__ static void run(const cuda::FwdParams& p, const CUtensorMap* map_q, const CUtensorMap* map_k,
                             const CUtensorMap* map_v, const Smem& s) {
    ptx::tma_prefetch_map(map_q);
    ptx::tma_prefetch_map(map_k);
    ptx::tma_prefetch_map(map_v);
    const FwdTileScheduler<Traits::kDynamicTiles> sched(p);
    if constexpr (Traits::kDynamicTiles) {
      // For want of registers the tiles received and the parity of Q's loads share one: bit 0 is
      // the parity, the rest the count.
      CoupledRing rings;
      for (uint32_t n_q = 0;; n_q += 2) {
        const FwdTile tile = receive_fwd_tile(s.tile_channel(), static_cast<int>(n_q >> 1));
        if (tile.m < 0) break;
        if (load_tile(p, map_q, map_k, map_v, s, tile, n_q & 1, rings)) n_q ^= 1;
      }
    } else {
      SplitRings rings;
      uint32_t q_phase = 0;
      for (int t = sched.static_index(0); sched.valid(t); t += static_cast<int>(gridDim.x)) {
        if (load_tile(p, map_q, map_k, map_v, s, sched.tile(t), q_phase, rings)) q_phase ^= 1;
      }
    }
  }
};

template <class Traits>
struct GemmFwd {
  using Element = typename Traits::Element;
  static constexpr int kNTilesS = Traits::kNTilesS;
  static constexpr int kPSteps = Traits::kBlockN / 16;

  // acc_s = Q K^T for the warpgroup's 64 rows (wg_row0 = 0 or 64); issue only (commit by caller).
  __device__ static void gemm_qk(float (&acc_s)[kNTilesS * 4], uint32_t q_tile, uint32_t k_tile, int wg_row0) {
    gemm_ss_kmajor<Element, Traits::kBlockN, Traits::kHeadDim>(acc_s, q_tile + wg_row0 * 128, Traits::kQBlockBytes,
                                                               k_tile, Traits::kKVBlockBytes);
  }

  // acc_o += P V; P from pack_p; V tile [kBlockN rows][D] in column blocks (N-major B).
  __device__ static void gemm_pv(float (&acc_o)[Traits::kNTilesO * 4], const uint32_t (&p)[kPSteps][4],
                                 uint32_t v_tile) {
    gemm_rs_nmajor<Element, Traits::kHeadDim, kPSteps>(acc_o, p, v_tile, Traits::kKVBlockBytes);
  }

  __device__ static void pack_p(uint32_t (&p)[kPSteps][4], const float (&s)[kNTilesS * 4]) {
    pack_a<Element, kPSteps>(p, s);
  }
};

}  // namespace flashflex::sm90
