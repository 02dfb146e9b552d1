// The sm_90a backward main kernel (FlashAttention-3's scheme: TMA, wgmma, warp specialization).
// One CTA per (kv head x split of its GQA group, kv tile of 128 keys, batch), in the order
// launch_bwd.cuh gives: K and V stay in shared memory, fp32 dK and dV in the consumers' registers
// while the producer (mainloop_bwd.cuh) streams the q steps of the CTA's walk (common/q_walk.cuh).
// Warpgroup 0 is the producer (setmaxnreg down; one load thread in warp 0, the dQ writer in
// warp 1), warpgroups 1 and 2 the consumers (setmaxnreg up), each owning 64 keys. Per step and
// consumer warpgroup:
//   S^T = K Q^T, dP^T = V dO^T                        (SS wgmma, both issued; wait for S^T)
//   P^T = exp2(mod(S^T) - LSE2) on visible scores     (under dP^T; common/score_mod.cuh; bitmap
//                                                     rows and sequence bounds decide visibility,
//                                                     skipped on full steps inside the bounds)
//   dS^T = P^T (dP^T - dpsum) mod'                    (wait dP^T; soft-cap: with P^T, one pass)
//   dV += P^T dO                                      (RS wgmma, P^T from registers)
//   dS^T -> shared memory; barrier of both consumer warpgroups (dQ needs all 128 keys)
//   dQ = dS K (its D / 2 columns; SS wgmma), dK += dS^T Q (RS wgmma)
//   wait dQ: stage it for the writer warp, which has the copy engine add it into the fp32
//   workspace (bulk reduce-add; dq_writer_bwd.cuh); wait dK, dV: release the stage
// Deterministic mode: dQ adds take turns per q tile (the writer's DqTurns).
// The dS^T tile is double-buffered: a warpgroup writes buffer j % 2 at step j only after the
// barrier of step j - 1, which the other warpgroup passes after its dQ of step j - 2 finished.
// The launcher is launch_bwd.cuh; bwd/ holds the passes before and after (shared with sm80).
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common/gather_grads.cuh"
#include "cuda/common/score_mod.cuh"
#include "cuda/params.hpp"
#include "cuda/ptx/barrier.cuh"
#include "cuda/ptx/bulk_reduce.cuh"
#include "cuda/ptx/ldmatrix.cuh"
#include "cuda/ptx/math.cuh"
#include "cuda/ptx/opaque.cuh"
#include "cuda/ptx/wgmma.cuh"
#include "cuda/sm90/dq_writer_bwd.cuh"
#include "cuda/sm90/epilogue_bwd.cuh"
#include "cuda/sm90/kernel_traits_bwd.cuh"
#include "cuda/sm90/mainloop_bwd.cuh"
#include "cuda/sm90/pipeline_bwd.cuh"
#include "cuda/sm90/wgmma_tiles.cuh"
#include "flashflex/block_mask.hpp"

namespace flashflex::sm90 {

// Named barrier (id 0 is __syncthreads; dq_writer_bwd.cuh has ids 2-5): both consumer
// warpgroups' dS^T stored.
constexpr int kBarDs = 1;

// P^T and dS^T of one step, in place: acc_s (S^T, raw q.k) becomes P^T, acc_dp (dP^T) becomes
// dS^T (times the score mod's derivative). Thread layout (ptx/wgmma.cuh): element 4j + 2h + c is
// key key0 + 8h, step row (q) 8j + 2t + c. bits: the step's bitmap rows (null for a full step),
// at the word of this thread's keys. Passes:
//   kP     P^T only (masks, bounds, score mod), while dP^T is still being computed
//   kDs    then dS^T = P^T (dP^T - dpsum): score mods whose derivative is 1 (kSplitGrad)
//   kBoth  both at once: soft-cap, whose derivative comes from the value's tanh, and linked mods
//          (the hook gives value, derivative and its gathers' partials in one call)
enum class GradPass { kP, kDs, kBoth };
template <ScoreModKind kMod>
constexpr bool kSplitGrad = kMod != ScoreModKind::kSoftcap && kMod != ScoreModKind::kLinked;

// kMasked = false: a full step inside both sequence bounds (most steps), no visibility work.
template <class Traits, ScoreModKind kMod, GradPass kPass, bool kMasked>
__device__ __forceinline__ void softmax_grad_step(float (&acc_s)[Traits::kNTilesS * 4],
                                                  float (&acc_dp)[Traits::kNTilesS * 4], const cuda::BwdParams& p,
                                                  const float* lse2, const float* dpsum, const uint32_t* bits, int m0,
                                                  int n0, int key0, int hq, int b, int t) {
  constexpr bool kWantP = kPass != GradPass::kDs, kWantDs = kPass != GradPass::kP;
  const cuda::ScoreModLogit2<kMod> mod(p.mod, p.scale, p.scale_log2, b, hq);
  const int q_lim = p.q_len - m0, key_lim = p.kv_len - n0;
  const int kbit = key0 % 32;
  // The sequence bound of this thread's two keys as the bits of a bitmap word (bits 0 and 8 after
  // the shift): a masked score is visible where one bit of `word` says so.
  const uint32_t keys_in = (key0 < key_lim ? 1u : 0u) | (key0 + 8 < key_lim ? 0x100u : 0u);
  float* dbias = nullptr;  // this head's [Q_LEN, KV_LEN] slice of the fp32 dbias accumulator
  if (kWantDs && kMod == ScoreModKind::kBias && p.dbias_accum != nullptr) {
    const int bb = p.bias_batch == 1 ? 0 : b, hb = p.bias_heads == 1 ? 0 : hq;
    dbias = p.dbias_accum + (static_cast<int64_t>(bb) * p.bias_heads + hb) * p.q_len * int64_t(p.kv_len);
  }
  [[maybe_unused]] cuda::GatherGradRuns<kMod> gather_grads;
#pragma unroll
  for (int j = 0; j < Traits::kNTilesS; ++j) {
    const int q0 = 8 * j + 2 * t;
    float2 row_lse2 = make_float2(0.f, 0.f), row_dpsum = make_float2(0.f, 0.f);
    if (kWantP) row_lse2 = *reinterpret_cast<const float2*>(lse2 + q0);
    if (kWantDs) row_dpsum = *reinterpret_cast<const float2*>(dpsum + q0);
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int q = q0 + c;
      const float l2 = c == 0 ? row_lse2.x : row_lse2.y;
      const float dps = c == 0 ? row_dpsum.x : row_dpsum.y;
      const bool saw_keys = l2 != INFINITY;  // lse -inf: nothing visible, whatever its scores
      uint32_t word = ~0u;
      if (kWantP && kMasked) {
        if (bits != nullptr) word = bits[q * kBitmapWordsPerRow] >> kbit;
        word = q < q_lim && saw_keys ? word & keys_in : 0u;
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int i = 4 * j + 2 * h + c;
        const int key = key0 + 8 * h;
        float dmod = 1.f;
        [[maybe_unused]] float d_gathered[kMaxHookGathers];
        [[maybe_unused]] int64_t offset[kMaxHookGathers];
        if (kWantP) {
          bool visible = saw_keys;
          if (kMasked) visible = (word >> (8 * h)) & 1u;
          float logit2;
          if constexpr (kMod == ScoreModKind::kLinked) {
            logit2 = mod.logit2(acc_s[i], m0 + q, n0 + key, dmod, d_gathered, offset);
          } else {
            logit2 = mod.logit2(acc_s[i], m0 + q, n0 + key, dmod);
          }
          // Hidden scores enter the exp as -inf (exp2 gives +0). A row that saw no keys has
          // LSE2 = +inf, so a finite logit gives +0 without the select: full steps of mods whose
          // logits are finite skip it.
          constexpr bool kFiniteLogits = kMod != ScoreModKind::kBias && kMod != ScoreModKind::kLinked;
          if (!kMasked && kFiniteLogits) {
            acc_s[i] = ptx::exp2_approx(logit2 - l2);
          } else {
            acc_s[i] = ptx::exp2_approx(visible ? logit2 - l2 : -INFINITY);
          }
        }
        if (kWantDs) {
          const float pe = acc_s[i];
          const float ds = pe * (acc_dp[i] - dps);
          // P^T is +0 exactly where the score is hidden (or its weight underflowed: ds = 0 there).
          if (kMod == ScoreModKind::kBias && dbias != nullptr && pe != 0.f) {
            atomicAdd(dbias + int64_t(m0 + q) * p.kv_len + (n0 + key), ds);
          }
          // d loss / d gathered element = dS * d mod / d element, added where the score counts.
          if constexpr (kMod == ScoreModKind::kLinked) {
            if (pe != 0.f) gather_grads.add(p.mod, d_gathered, offset, ds);
          }
          acc_dp[i] = ds * dmod;
        }
      }
    }
  }
  if constexpr (kWantDs) gather_grads.flush(p.mod);
}

template <class Traits, ScoreModKind kMod, GradPass kPass>
__device__ __forceinline__ void softmax_grad(float (&acc_s)[Traits::kNTilesS * 4], float (&acc_dp)[Traits::kNTilesS * 4],
                                             const cuda::BwdParams& p, const float* lse2, const float* dpsum,
                                             const uint32_t* bits, int m0, int n0, int key0, int hq, int b, int t) {
  const bool masked = bits != nullptr || p.q_len - m0 < Traits::kBlockM || p.kv_len - n0 < Traits::kBlockN;
  if (kPass != GradPass::kDs && masked) {
    softmax_grad_step<Traits, kMod, kPass, true>(acc_s, acc_dp, p, lse2, dpsum, bits, m0, n0, key0, hq, b, t);
  } else {
    softmax_grad_step<Traits, kMod, kPass, false>(acc_s, acc_dp, p, lse2, dpsum, bits, m0, n0, key0, hq, b, t);
  }
}

// dS^T fragments -> the [128 keys][64 q rows] tile (128-byte swizzle: 16-byte chunk ^= key % 8),
// one stmatrix.x4 per k16 step. Register r of ds[kk] is the 8 x 8 matrix of keys
// warp_key0 + 8 (r % 2) + [0, 8) and q rows 16 kk + 8 (r / 2) + [0, 8) (pack order of
// GemmBwd::pack, the plain stmatrix layout: lane l holds row l / 4, columns 2 (l % 4), +1).
// Lane l gives row l % 8 of matrix l / 8; its address for step kk is its kk = 0 address with
// chunk bits ^ 2 kk (the chunk 2 kk + r / 2 < 8 needs no carry).
struct DsStore {
  uint32_t lane_off;  // the lane's row address in a dS^T buffer at kk = 0

  __device__ explicit DsStore(int warp_key0, int lane) {
    const int m = lane / 8, key = warp_key0 + 8 * (m % 2) + lane % 8;
    lane_off = key * 128 + (((m / 2) ^ (key % 8)) << 4);
  }
  template <int kKSteps>
  __device__ void store(uint32_t tile, const uint32_t (&ds)[kKSteps][4]) const {
    static_assert(kKSteps <= 4, "a 64-row step: chunks 2 kk + 1 < 8");
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) ptx::stmatrix_x4(tile + (lane_off ^ (kk << 5)), ds[kk]);
  }
};

// The warpgroup's fp32 dQ columns -> its staging tile: kDqBoxes boxes of 64 rows x 32 columns in
// the dQ map's 128-byte swizzle (common/dq_writer.cuh's layout). A 64-bit store is served per
// half-warp: 4 rows (row % 8 = 4 i .. 4 i + 3) x 32 bytes. In the swizzle, rows r and r ^ 1 put a
// 32-byte column group on the same banks (16-byte chunk ^= r % 8 keeps the chunk pair), so at
// store n odd rows write column group n ^ 2 instead of n: the half-warp's 4 rows then land on 4
// distinct bank groups (one wavefront where there were two); the selection costs one select per
// value. Addresses: column group j of row r is chunk (2 (j % 4) + t / 2) ^ (r % 8) of box j / 4,
// i.e. one per-thread base (j = 0, the odd rows' swap folded in) with chunk bits ^ 2 (n % 4) and
// a constant box offset: one register where a precomputed address per store spilled.
struct DqStage {
  uint32_t base;  // the thread's column group 0 (its row's swapped group for odd rows), row `row`
  bool odd;

  __device__ DqStage(int row, int t) : odd(row & 1) {
    base = row * 128 + ((((t / 2) ^ (row & 7)) ^ (odd ? 4 : 0)) << 4) + (t % 2) * 8;
  }
  template <class Traits>
  __device__ void store(uint32_t tile, const float (&acc)[Traits::kDqCols / 2]) const {
    static_assert(Traits::kDqCols % 32 == 0, "column groups swap within a 32-column box");
    const uint32_t b = ptx::opaque(base);
#pragma unroll
    for (int n = 0; n < Traits::kDqCols / 8; ++n) {
      const uint32_t addr = tile + (n / 4) * Traits::kDqBoxBytes + (b ^ ((n % 4) << 5));
#pragma unroll
      for (int h = 0; h < 2; ++h) {  // rows row and row + 8
        const float x = odd ? acc[4 * (n ^ 2) + 2 * h] : acc[4 * n + 2 * h];
        const float y = odd ? acc[4 * (n ^ 2) + 2 * h + 1] : acc[4 * n + 2 * h + 1];
        ptx::st_shared_f32x2(addr + h * 8 * 128, x, y);
      }
    }
  }
};

template <class Traits, ScoreModKind kMod>
__device__ void consumer_bwd(const cuda::BwdParams& p, const SmemBwd<Traits>& s, int cwg, int kv_head, int split,
                             int kv_tile, int b) {
  using Gemm = GemmBwd<Traits>;
  const int tid = threadIdx.x % 128;
  const int lane = tid % 32, warp = tid / 32;
  const int t = lane % 4;
  const int wg_row0 = cwg * 64;
  const int key0 = wg_row0 + warp * 16 + lane / 4;  // this thread's keys: key0, key0 + 8 (in the tile)
  const int n0 = kv_tile * Traits::kBlockN;
  const int dq_col0 = cwg * Traits::kDqCols;
  const DsStore ds_store(wg_row0 + warp * 16, lane);
  const DqStage dq_stage(warp * 16 + lane / 4, t);

  float acc_dk[Traits::kNTilesKV * 4], acc_dv[Traits::kNTilesKV * 4];
#pragma unroll
  for (int i = 0; i < Traits::kNTilesKV * 4; ++i) acc_dk[i] = acc_dv[i] = 0.f;

  ptx::mbar_wait(s.kv_full(), 0);
  PipeState<Traits::kStages> st;
  int ds_buf = 0;
  for (;;) {
    ptx::mbar_wait(s.full(st.stage), st.phase);
    const StepSlot* slot = s.slot(st.stage);
    if (!slot->valid) break;
    const int m0 = slot->m0, hq = slot->hq;
    const uint32_t* bits = slot->partial != 0 ? s.bits_ptr(st.stage) + key0 / 32 : nullptr;
    const float* lse2 = s.lse2_ptr(st.stage);
    const float* dpsum = s.dpsum_ptr(st.stage);

    float acc_s[Traits::kNTilesS * 4], acc_dp[Traits::kNTilesS * 4];
    Gemm::gemm_t(acc_s, s.k(), s.q(st.stage), wg_row0);
    ptx::wgmma_commit();
    Gemm::gemm_t(acc_dp, s.v(), s.dout(st.stage), wg_row0);
    ptx::wgmma_commit();
    if constexpr (kSplitGrad<kMod>) {
      ptx::wgmma_wait<1>();  // S^T
      ptx::fence_operand(acc_s);
      softmax_grad<Traits, kMod, GradPass::kP>(acc_s, acc_dp, p, lse2, dpsum, bits, m0, n0, key0, hq, b, t);
      ptx::wgmma_wait<0>();  // dP^T, computed under P^T
      ptx::fence_operand(acc_dp);
      softmax_grad<Traits, kMod, GradPass::kDs>(acc_s, acc_dp, p, lse2, dpsum, bits, m0, n0, key0, hq, b, t);
    } else {
      ptx::wgmma_wait<0>();
      ptx::fence_operand(acc_s);
      ptx::fence_operand(acc_dp);
      softmax_grad<Traits, kMod, GradPass::kBoth>(acc_s, acc_dp, p, lse2, dpsum, bits, m0, n0, key0, hq, b, t);
    }
    uint32_t p_frag[Traits::kKSteps][4], ds_frag[Traits::kKSteps][4];
    Gemm::pack(p_frag, acc_s);
    Gemm::pack(ds_frag, acc_dp);
    Gemm::gemm_acc(acc_dv, p_frag, s.dout(st.stage));
    ptx::wgmma_commit();

    ds_store.store(s.ds(ds_buf), ds_frag);
    ptx::fence_proxy_async_shared();  // the stores, before the wgmma reads of the other warpgroup
    ptx::named_bar_sync(kBarDs, Traits::kConsumerThreads);

    float acc_dq[Traits::kDqCols / 2];
    Gemm::gemm_dq(acc_dq, s.ds(ds_buf), s.k(), dq_col0);
    ptx::wgmma_commit();
    Gemm::gemm_acc(acc_dk, ds_frag, s.q(st.stage));
    ptx::wgmma_commit();
    ptx::wgmma_wait<1>();  // dV and dQ done; dK runs on under the dQ add
    ptx::fence_operand(acc_dq);
    ptx::named_bar_sync(kBarDqEmpty + cwg, kDqBarThreads);  // the writer has read the last tile
    dq_stage.store<Traits>(s.dq(cwg), acc_dq);
    ptx::fence_proxy_async_shared();
    ptx::named_bar_arrive(kBarDqFull + cwg, kDqBarThreads);  // dq_writer_bwd.cuh adds it
    ptx::wgmma_wait<0>();
    ptx::fence_operand(acc_dk);
    ptx::fence_operand(acc_dv);
    ptx::mbar_arrive(s.empty(st.stage));
    st.advance();
    ds_buf ^= 1;
  }
  EpilogueBwd<Traits>::store(p, acc_dk, acc_dv, b, kv_head, split, n0 + key0, t);
}

template <class Traits, ScoreModKind kMod>
__global__ void __launch_bounds__(Traits::kNumThreads, 1)
    bwd_kernel(const __grid_constant__ cuda::BwdParams p, const __grid_constant__ CUtensorMap map_q,
               const __grid_constant__ CUtensorMap map_k, const __grid_constant__ CUtensorMap map_v,
               const __grid_constant__ CUtensorMap map_do) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const auto s = aligned_smem<SmemBwd<Traits>>(smem_raw);
  if (threadIdx.x == 0) s.init_barriers();
  __syncthreads();
  // The grid's order (launch_bwd.cuh): kv heads x splits fastest by default, kv tiles fastest and
  // in reverse in deterministic mode (a CTA waits only for CTAs of higher kv tiles).
  const int head_split = p.deterministic ? blockIdx.y : blockIdx.x;
  const int tile_index = p.deterministic ? blockIdx.x : blockIdx.y;
  const int kv_head = head_split / p.splits, split = head_split % p.splits;
  const int kv_tile = p.deterministic ? p.num_kv_tiles - 1 - tile_index : tile_index;
  const int b = blockIdx.z;
  // Warp-uniform as far as the compiler knows (a shuffle of lane 0's value): the consumers'
  // wgmma descriptors and shared addresses derived from it then live in uniform registers,
  // where threadIdx.x / 128 made them per-thread values moved to uniform ones (R2UR) before
  // every wgmma, every step.
  const int wg = __shfl_sync(~0u, static_cast<int>(threadIdx.x / 128), 0);
  if (wg == 0) {
    ptx::setmaxnreg_dec<Traits::kProducerRegs>();
    // Warp-uniform too: the load thread's walk then stays in uniform registers beside the
    // writer warp's branch (with threadIdx.x tests it moved to per-thread ones and spilled).
    const int warp = __shfl_sync(~0u, static_cast<int>(threadIdx.x / 32), 0);
    if (warp == 0) {
      if (threadIdx.x == 0) ProducerBwd<Traits>::run(p, &map_q, &map_k, &map_v, &map_do, s, kv_head, split, kv_tile, b);
    } else if (warp == 1) {
      DqWriterBwd<Traits>::run(p, s, b, threadIdx.x % 32);
    }
  } else {
    ptx::setmaxnreg_inc<Traits::kConsumerRegs>();
    consumer_bwd<Traits, kMod>(p, s, wg - 1, kv_head, split, kv_tile, b);
  }
#else
  __trap();  // built for sm_90a only
#endif
}

}  // namespace flashflex::sm90
