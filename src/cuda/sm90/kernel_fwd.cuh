// The sm_90a forward kernel (FlashAttention-3 scheme: TMA, wgmma, warp specialization) and its
// launcher. Persistent: grid = min(#SMs, tiles); one thread of the producer warpgroup takes each
// CTA's next q tile from tile_scheduler_fwd.cuh's counter and hands it to the load thread and
// the consumers.
// Warpgroup 0 is the producer (setmaxnreg down; one thread runs ProducerFwd, mainloop_fwd.cuh,
// one the tile feed);
// warpgroups 1 and 2 are consumers (setmaxnreg up), each owning 64 rows of the 128-row tile.
// Per tile and consumer warpgroup, with the S of step j overlapping the softmax of step j - 1:
//   wait Q; S_0 = Q K_0^T; scores + softmax of step 0; P_0 -> 16 bits
//   for j >= 1: issue S_j = Q K_j^T; issue O += P_{j-1} V_{j-1}; wait S_j; mask; release K_j;
//               softmax_j (while P V runs); wait P V; release V_{j-1}; O *= alpha_j; P_j -> 16 bits
//   O += P_last V_last; release; epilogue (epilogue_fwd.cuh)
// Q is released after the tile's last Q K^T, so the producer loads the next tile's Q under the
// last P V and the epilogue; the consumers load the next tile's list heads under it too.
// The math between the GEMMs is the shared one of both architectures: common/kv_cursor.cuh (the
// kv steps), common/mask_apply.cuh (score mod, bitmap, KV_LEN bound), common/online_softmax.cuh,
// common/row_local_fold.cuh (EAGLE3). The launcher is sm90/launch_fwd.cuh.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common/fragment.cuh"
#include "cuda/common/kv_cursor.cuh"
#include "cuda/common/mask_apply.cuh"
#include "cuda/common/online_softmax.cuh"
#include "cuda/common/row_local_fold.cuh"
#include "cuda/common/score_mod.cuh"
#include "cuda/params.hpp"
#include "cuda/ptx/barrier.cuh"
#include "cuda/ptx/wgmma.cuh"
#include "cuda/sm90/epilogue_fwd.cuh"
#include "cuda/sm90/kernel_traits_fwd.cuh"
#include "cuda/sm90/mainloop_fwd.cuh"
#include "cuda/sm90/pipeline_fwd.cuh"
#include "cuda/sm90/tile_scheduler_fwd.cuh"
#include "cuda/sm90/wgmma_tiles.cuh"

namespace flashflex::sm90 {

// kPingPong: the two consumer warpgroups take turns issuing their GEMMs (named barriers 1 and 2),
// so one's softmax runs under the other's products. Consumer 1 hands consumer 0 the first turn;
// consumer 0 takes back the last one before it leaves, so every arrival is consumed.
template <bool kPingPong>
struct GemmTurns {
  int cwg;
  __device__ void init() const {
    if (kPingPong && cwg == 1) ptx::named_bar_arrive(1, 256);
  }
  __device__ void begin() const {
    if (kPingPong) ptx::named_bar_sync(1 + cwg, 256);
  }
  __device__ void end() const {
    if (kPingPong) ptx::named_bar_arrive(2 - cwg, 256);
  }
  __device__ void finish() const {
    if (kPingPong && cwg == 0) ptx::named_bar_sync(1, 256);
  }
};

// The score mod and the masks of one step (common/mask_apply.cuh) on a warp's S fragment: q_row0,
// the tile's first q row; warp_row0, the warp's first row in the tile; bits, the step's tile bitmap
// in shared memory ([128 rows][kBitmapWordsPerRow words]) or null for a full step.
// raw_units: the scores stay raw q.k (identity mod, scale > 0; online_softmax.cuh).
template <class Traits, class Mod>
__device__ __forceinline__ void mask_step(float (&acc)[1][Traits::kNTilesS][4], const Mod& mod, bool raw_units,
                                          const cuda::FwdParams& p, int q_row0, int warp_row0, int kv,
                                          const uint32_t* bits, int lane) {
  using Mask = cuda::FragmentMask<1, Traits::kNTilesS>;
  if (!raw_units) Mask::apply_score_mod(acc, mod, p.scale, q_row0 + warp_row0, kv, lane);
  if (bits != nullptr) {
    Mask::template mask_bitmap<Traits::kBitsWordsPerStep, kBitmapWordsPerRow>(acc, bits + (kv % kTileSize) / 32,
                                                                              warp_row0, lane);
  }
  if (kv + Traits::kBlockN > p.kv_len) Mask::mask_kv_bound(acc, kv, p.kv_len, lane);
}

template <class Traits, ScoreModKind kMod, bool kPingPong, bool kRowLocal>
__device__ void consumer_fwd(const cuda::FwdParams& p, const SmemFwd<Traits>& s, int cwg) {
  using Gemm = GemmFwd<Traits>;
  using Mod = cuda::ScoreModOp<kMod>;
  using Softmax = cuda::OnlineSoftmax<1, Traits::kNTilesS>;
  using Cursor = cuda::KvStepCursor<Traits::kBlockN, false>;
  using Pipe = PipeState<Traits::kStages>;
  const int tid = threadIdx.x % 128;
  const int lane = tid % 32;
  const int wg_row0 = cwg * 64;
  const int warp_row0 = wg_row0 + (tid / 32) * 16;  // the warp's first row inside the tile
  // Units of the running max (online_softmax.cuh): raw q.k without a mod when scale > 0, scaled
  // (and modified) scores otherwise.
  const bool raw_units = Mod::kIsIdentity && p.scale > 0.f;
  const float unit = raw_units ? p.scale : 1.f;
  const float sl2 = unit * cuda::kLog2e;

  const GemmTurns<kPingPong> turns{cwg};
  turns.init();
  Pipe k_st, v_st;
  uint32_t q_phase = 0;
  const FwdTileScheduler<Traits::kDynamicTiles> sched(p);
  const FwdTileChannel channel = s.tile_channel();
  int n = 0;  // tiles received
  cuda::KvListHead head;  // of tile t, loaded during the epilogue of the tile before
  int t = consumer_tile_index(sched, channel, n++);
  if (sched.valid(t)) {
    const FwdTile tile = sched.tile(t);
    head = cuda::load_kv_list_head(p, tile.b, tile.h, tile.m);
  }
  while (sched.valid(t)) {
    const FwdTile tile = sched.tile(t);
    const int q_row0 = tile.m * Traits::kBlockM;
    const Mod mod(p.mod, tile.b, tile.h);
    float acc_o[Traits::kNTilesO * 4];
#pragma unroll
    for (int i = 0; i < Traits::kNTilesO * 4; ++i) acc_o[i] = 0.f;
    Softmax softmax;
    softmax.init();

    Cursor cur(p, head);
    const int valid_rows = kRowLocal ? p.row_local.limit.valid_rows(tile.b, p.q_len) : p.q_len;
    if (cur.valid() && q_row0 < valid_rows) {  // the producer tests the same
      float acc_s[Traits::kNTilesS * 4];
      uint32_t p_frag[Traits::kBlockN / 16][4];
      float alpha[1][2];
      ptx::mbar_wait(s.q_full(), q_phase);
      q_phase ^= 1;
      // Step 0: S only.
      int kv = cur.kv_start();
      bool partial = cur.partial();
      cur.advance();
      bool last = !cur.valid();
      ptx::mbar_wait(s.k_full(k_st.stage), k_st.phase);
      turns.begin();
      Gemm::gemm_qk(acc_s, s.q(), s.k(k_st.stage), wg_row0);
      ptx::wgmma_commit();
      turns.end();
      ptx::wgmma_wait<0>();
      ptx::fence_operand(acc_s);
      mask_step<Traits>(cuda::as_fragment(acc_s), mod, raw_units, p, q_row0, warp_row0, kv,
                        partial ? s.bits_ptr(k_st.stage) : nullptr, lane);
      ptx::mbar_arrive(s.k_empty(k_st.stage));
      k_st.advance();
      if (last) ptx::mbar_arrive(s.q_empty());
      softmax.exponentiate_rows(cuda::as_fragment(acc_s), sl2, alpha);
      Gemm::pack_p(p_frag, acc_s);

      while (!last) {
        kv = cur.kv_start();
        partial = cur.partial();
        cur.advance();
        last = !cur.valid();
        ptx::mbar_wait(s.k_full(k_st.stage), k_st.phase);
        ptx::mbar_wait(s.v_full(v_st.stage), v_st.phase);
        turns.begin();
        Gemm::gemm_qk(acc_s, s.q(), s.k(k_st.stage), wg_row0);
        ptx::wgmma_commit();
        Gemm::gemm_pv(acc_o, p_frag, s.v(v_st.stage));
        ptx::wgmma_commit();
        turns.end();
        ptx::wgmma_wait<1>();
        ptx::fence_operand(acc_s);
        mask_step<Traits>(cuda::as_fragment(acc_s), mod, raw_units, p, q_row0, warp_row0, kv,
                          partial ? s.bits_ptr(k_st.stage) : nullptr, lane);
        ptx::mbar_arrive(s.k_empty(k_st.stage));
        k_st.advance();
        if (last) ptx::mbar_arrive(s.q_empty());
        softmax.exponentiate_rows(cuda::as_fragment(acc_s), sl2, alpha);
        ptx::wgmma_wait<0>();
        ptx::fence_operand(acc_o);
        ptx::mbar_arrive(s.v_empty(v_st.stage));
        v_st.advance();
        Softmax::rescale_o_rows(cuda::as_fragment(acc_o), alpha);
        Gemm::pack_p(p_frag, acc_s);
      }
      ptx::mbar_wait(s.v_full(v_st.stage), v_st.phase);
      turns.begin();
      Gemm::gemm_pv(acc_o, p_frag, s.v(v_st.stage));
      ptx::wgmma_commit();
      turns.end();
      ptx::wgmma_wait<0>();
      ptx::fence_operand(acc_o);
      ptx::mbar_arrive(s.v_empty(v_st.stage));
      v_st.advance();
    }
    t = consumer_tile_index(sched, channel, n++);  // published while this tile ran (dynamic)
    if (sched.valid(t)) {
      const FwdTile next = sched.tile(t);
      head = cuda::load_kv_list_head(p, next.b, next.h, next.m);
    }

    using Element = typename Traits::Element;
    if constexpr (kRowLocal) {
      cuda::RowLocalFold<Element, 1, Traits::kNTilesO>::fold(softmax, cuda::as_fragment(acc_o), p, tile.b, tile.h,
                                                             tile.hkv, q_row0, warp_row0, valid_rows, sl2,
                                                             raw_units ? 1.f : p.scale, lane);
    }
    float inv[1][2], lse[1][2];
    softmax.finish(inv, lse, unit);
    Element* out = static_cast<Element*>(p.out.data) + tile.b * p.out.stride_b + tile.h * p.out.stride_h;
    float* lse_rows = p.lse.data != nullptr ? p.lse.data + tile.b * p.lse.stride_b + tile.h * p.lse.stride_h : nullptr;
    EpilogueFwd<Traits>::store(acc_o, inv[0], lse[0], out, p.out.stride_t, lse_rows, p.lse.stride_t,
                               q_row0 + warp_row0 + lane / 4, p.q_len, lane);
  }
  turns.finish();
}

template <class Traits, ScoreModKind kMod, bool kRowLocal>
__global__ void __launch_bounds__(Traits::kNumThreads, 1)
    fwd_kernel(const __grid_constant__ cuda::FwdParams p, const __grid_constant__ CUtensorMap map_q,
               const __grid_constant__ CUtensorMap map_k, const __grid_constant__ CUtensorMap map_v) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const auto s = aligned_smem<SmemFwd<Traits>>(smem_raw);
  if (threadIdx.x == 0) s.init_barriers();
  __syncthreads();
  const int wg = threadIdx.x / 128;
  if (wg == 0) {
    ptx::setmaxnreg_dec<Traits::kProducerRegs>();
    if (threadIdx.x == 0) ProducerFwd<Traits, kRowLocal>::run(p, &map_q, &map_k, &map_v, s);
    if constexpr (Traits::kDynamicTiles) {
      if (threadIdx.x == 32) run_fwd_tile_feed(s.tile_channel(), FwdTileScheduler<true>(p), p.tile_counter);
    }
  } else {
    ptx::setmaxnreg_inc<Traits::kConsumerRegs>();
    consumer_fwd<Traits, kMod, Traits::kPingPong, kRowLocal>(p, s, wg - 1);
  }
#else
  __trap();  // built for sm_90a only
#endif
}

}  // namespace flashflex::sm90
