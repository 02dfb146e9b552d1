// The sm80 backward main kernel (FlashAttention-2 style, arXiv 2307.08691). One CTA per
// (kv tile of kBlockN keys, kv head x split of its GQA group, batch): K and V stay in shared
// memory and fp32 dK, dV in registers while the CTA walks, for each of its query heads, the q
// tiles that the block mask lists for its kv tile (common/q_walk.cuh). Per step of kBlockM rows:
//   S = Q K^T, dP = dO V^T                      (gemm_bwd.cuh, warps kWarpsSdpM x kWarpsSdpN)
//   P = exp2(mod(S) - LSE2) on visible scores, dS = P (dP - dpsum) mod'
//                                               (common/step_visibility.cuh, common/score_mod.cuh)
//   P, dS -> shared memory (16-bit); dQacc += dS K; dV += P^T dO, dK += dS^T Q
//   (deterministic mode: dV, dK before dQ)
// dQ's fp32 tile goes into the workspace through common/dq_writer.cuh (red.add from registers, or
// on sm_90 code the copy engine's bulk reduce-add from shared memory).
// Q and dO of the next step are prefetched (cp.async) as the current one starts; the walk itself
// runs two steps ahead (three step slots in shared memory). dK, dV
// are summed over the CTA's heads in registers (no atomics); epilogue_bwd.cuh stores dK * scale,
// dV, or fp32 partials when the group is split over several CTAs (summed by bwd/convert.cuh).
// Inputs come from bwd/preprocess.cuh (LSE2, dpsum, zeroed dQacc); bwd/convert.cuh finishes dQ.
#pragma once

#include <cstdint>

#include "cuda/common/dq_writer.cuh"
#include "cuda/common/gather_grads.cuh"
#include "cuda/common/q_walk.cuh"
#include "cuda/common/score_mod.cuh"
#include "cuda/common/step_visibility.cuh"
#include "cuda/params.hpp"
#include "cuda/ptx/cp_async.cuh"
#include "cuda/ptx/ldmatrix.cuh"
#include "cuda/ptx/math.cuh"
#include "cuda/ptx/mma.cuh"
#include "cuda/sm80/epilogue_bwd.cuh"
#include "cuda/sm80/gemm_bwd.cuh"
#include "cuda/sm80/kernel_traits_bwd.cuh"

namespace flashflex::sm80 {

using cuda::BwdParams;
using cuda::BwdStep;
using cuda::QWalk;
using cuda::QWalkState;

// cp.async of a [kRows x kCols] tile from `gmem` (rows row_stride apart; the first `valid_rows`
// in range, the rest zero-filled; kAllValid: every row in range) into a swizzled shared tile, by
// all threads.
template <class Tr, int kRows, int kCols, bool kAllValid = false>
__device__ __forceinline__ void load_tile(uint32_t smem, const typename Tr::T* gmem, int64_t row_stride,
                                          int valid_rows, int tid) {
  constexpr int kChunksPerRow = kCols / 8;
  constexpr int kRowsPerPass = Tr::kNumThreads / kChunksPerRow;
  static_assert(kRows % kRowsPerPass == 0, "tile chunks divide evenly over the threads");
  static_assert(kRowsPerPass % 8 == 0, "a pass keeps the swizzle phase (row % 8)");
  const int row = tid / kChunksPerRow, col = (tid % kChunksPerRow) * 8;
  const typename Tr::T* src = gmem + row * row_stride + col;
  const uint32_t dst = smem + 2u * swizzle<kCols>(row, col);
#pragma unroll
  for (int i = 0; i < kRows / kRowsPerPass; ++i) {
    const bool valid = kAllValid || row + i * kRowsPerPass < valid_rows;
    ptx::cp_async_16(dst + i * kRowsPerPass * kCols * 2, valid ? src : gmem, valid);
    src += kRowsPerPass * row_stride;
  }
}

// Loads of one step into stage `stage`: Q, dO rows [m0, m0 + kBlockM) of head hq and their LSE2,
// dpsum (workspace rows are padded to 128, so the statistics need no bounds). The step carries
// its row offsets (common/q_walk.cuh): one 64-bit add per tensor here.
template <class Tr>
__device__ __forceinline__ void load_step(const BwdParams& p, uint32_t smem, int stage, const BwdStep& s, int tid) {
  using T = typename Tr::T;
  const int valid = p.q_len - s.m0;
  const T* q = static_cast<const T*>(p.q.data) + s.q_off;
  const T* dout = static_cast<const T*>(p.dout.data) + s.do_off;
  if (valid >= Tr::kBlockM) {  // every step but the last of a ragged sequence: no compares, no selects
    load_tile<Tr, Tr::kBlockM, Tr::kHeadDim, true>(smem + Tr::kOffQ + stage * Tr::kQBytes, q, p.q.stride_t, valid,
                                                   tid);
    load_tile<Tr, Tr::kBlockM, Tr::kHeadDim, true>(smem + Tr::kOffDo + stage * Tr::kQBytes, dout, p.dout.stride_t,
                                                   valid, tid);
  } else {
    load_tile<Tr, Tr::kBlockM, Tr::kHeadDim>(smem + Tr::kOffQ + stage * Tr::kQBytes, q, p.q.stride_t, valid, tid);
    load_tile<Tr, Tr::kBlockM, Tr::kHeadDim>(smem + Tr::kOffDo + stage * Tr::kQBytes, dout, p.dout.stride_t, valid,
                                             tid);
  }
  const int64_t row = s.ws_row;
  if (tid < Tr::kBlockM) {
    ptx::cp_async_4(smem + Tr::kOffLse + stage * Tr::kStatBytes + 4 * tid, p.lse2 + row + tid, true);
  } else if (tid < 2 * Tr::kBlockM) {
    const int r = tid - Tr::kBlockM;
    ptx::cp_async_4(smem + Tr::kOffDpsum + stage * Tr::kStatBytes + 4 * r, p.dpsum + row + r, true);
  }
}

// An empty asm that "changes" x: what is computed from x cannot be hoisted out of the loop it is
// in. The main loop derives its per-lane addresses from such a copy of threadIdx.x: recomputing
// them costs a few integer instructions per step, hoisting them all costs more registers than
// the loop has.
__device__ __forceinline__ int opaque(int x) {
  asm volatile("" : "+r"(x));
  return x;
}

// The kv block of this CTA (grid: kv head x split, kv block, batch; launch_bwd.cuh). Deterministic
// mode runs kv blocks in reverse, so that a CTA waits only for CTAs of higher kv blocks, which
// started before it.
__device__ __forceinline__ int kv_block_of(const BwdParams& p) {
  return p.deterministic ? gridDim.y - 1 - blockIdx.y : blockIdx.y;
}

template <class Tr, ScoreModKind kMod>
__global__ void __launch_bounds__(Tr::kNumThreads, Tr::kMinBlocksPerSm)
    bwd_main_kernel(const __grid_constant__ BwdParams p) {  // grid constant: p.dq_map is read by the copy engine
  using T = typename Tr::T;
  // gemm_bwd.cuh's address arithmetic needs 128-byte aligned tiles: the launch adds kSmemAlign
  // bytes of slack, used here should the dynamic shared window start unaligned (it does under
  // some tools).
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem_buf = smem_raw + ((Tr::kSmemAlign - ptx::smem_addr(smem_raw) % Tr::kSmemAlign) % Tr::kSmemAlign);
  const uint32_t smem = ptx::smem_addr(smem_buf);
  const float* s_lse = reinterpret_cast<const float*>(smem_buf + Tr::kOffLse);
  const float* s_dpsum = reinterpret_cast<const float*>(smem_buf + Tr::kOffDpsum);
  BwdStep* s_steps = reinterpret_cast<BwdStep*>(smem_buf + Tr::kOffSteps);  // [3]
  QWalkState* s_walk = reinterpret_cast<QWalkState*>(smem_buf + Tr::kOffWalk);
  static_assert(3 * sizeof(BwdStep) <= Tr::kStepsBytes && sizeof(QWalkState) <= Tr::kWalkBytes, "walk smem");

  constexpr int kCtasPerTile = kTileSize / Tr::kBlockN;
  const int n_block = kv_block_of(p);
  const int b = blockIdx.z;
  const int n0 = n_block * Tr::kBlockN;
  const int kv_tile = n0 / kTileSize;
  const int tid = threadIdx.x;

  {  // K, V of this CTA
    const int kv_head = blockIdx.x / p.splits;
    const int valid = p.kv_len - n0;
    const T* k = static_cast<const T*>(p.k.data) + b * p.k.stride_b + kv_head * p.k.stride_h + n0 * p.k.stride_t;
    const T* v = static_cast<const T*>(p.v.data) + b * p.v.stride_b + kv_head * p.v.stride_h + n0 * p.v.stride_t;
    load_tile<Tr, Tr::kBlockN, Tr::kHeadDim>(smem + Tr::kOffK, k, p.k.stride_t, valid, tid);
    load_tile<Tr, Tr::kBlockN, Tr::kHeadDim>(smem + Tr::kOffV, v, p.v.stride_t, valid, tid);
  }
  // The walk runs two steps ahead of the compute: step j in slot j % 3. Steps 0 and 1 now.
  if (tid == 0) {
    const int kv_head = blockIdx.x / p.splits, split = blockIdx.x % p.splits;
    QWalkState w;
    BwdStep st;
    int side = 0;
    QWalk<Tr::kBlockM>::start(w, kv_head * p.group + split * p.heads_per_cta, p.rows.valid_rows(b, p.q_len));
    const int32_t* fetch = QWalk<Tr::kBlockM>::next(w, p, b, kv_tile, st, side);
    s_steps[0] = st;
    if (st.valid) {
      if (fetch != nullptr) {  // prologue only: a blocking load
        const int entry = __ldg(fetch);
        if (side == 0) {
          w.next_entry[0] = entry;
        } else {
          w.next_entry[1] = entry;
        }
      }
      fetch = QWalk<Tr::kBlockM>::next(w, p, b, kv_tile, st, side);
      s_steps[1] = st;
      *s_walk = w;
      QWalk<Tr::kBlockM>::fetch_async(*s_walk, fetch, side);  // committed with step 0's loads
    } else {
      s_steps[1].valid = 0;
    }
  }
  __syncthreads();
  if (s_steps[0].valid) load_step<Tr>(p, smem, 0, s_steps[0], tid);
  ptx::cp_async_commit();

  float dv_acc[Tr::kKvFragsN][Tr::kKvFragsD][4];
  float dk_acc[Tr::kKvFragsN][Tr::kKvFragsD][4];
  zero(dv_acc);
  zero(dk_acc);

  int stage = 0;
  for (int slot = 0; s_steps[slot].valid; slot = slot == 2 ? 0 : slot + 1, stage ^= 1) {
    ptx::cp_async_wait<0>();
    __syncthreads();  // (A) this step's tiles landed; every warp is done with the previous step
    const BwdStep& cur = s_steps[slot];
    const int next_slot = slot == 2 ? 0 : slot + 1, after_slot = next_slot == 2 ? 0 : next_slot + 1;
    const BwdStep& nxt = s_steps[next_slot];
    // Prefetch the next step into the other stage (last read by the previous step, before (A)).
    if (nxt.valid) load_step<Tr>(p, smem, stage ^ 1, nxt, tid);
    // The walk's step after next, into the slot of the previous step (its readers finished before
    // (A)). Here, not after the elementwise step: warp 0 is the only one that waits for it, and
    // the other warp of its scheduler keeps the tensor pipe busy meanwhile; before (B) every warp
    // would wait for it. Registers are plentiful here (no S / dP accumulators yet).
    if (tid == 0) {
      if (nxt.valid) {
        QWalkState w = *s_walk;  // its list fetch of the previous call landed before (A)
        int side = 0;
        const int32_t* fetch = QWalk<Tr::kBlockM>::next(w, p, b, kv_tile, s_steps[after_slot], side);
        *s_walk = w;
        QWalk<Tr::kBlockM>::fetch_async(*s_walk, fetch, side);
        // its list fetch: committed below with the prefetch, complete at the next (A)
      } else {
        s_steps[after_slot].valid = 0;
      }
    }
    ptx::cp_async_commit();
    const int tid_v = opaque(tid);
    const int lane = tid_v & 31, warp = tid_v >> 5;
    const int g = lane >> 2, t = lane & 3;
    // Warp tiles of the three GEMM shapes.
    const int sdp_row0 = (warp / Tr::kWarpsSdpN) * Tr::kSdpTileM, sdp_col0 = (warp % Tr::kWarpsSdpN) * Tr::kSdpTileN;
    const int kv_row0 = (warp / Tr::kWarpsKvD) * Tr::kKvTileN, kv_col0 = (warp % Tr::kWarpsKvD) * Tr::kKvTileD;
    const int dq_row0 = (warp / Tr::kWarpsDqD) * Tr::kDqTileM, dq_col0 = (warp % Tr::kWarpsDqD) * Tr::kDqTileD;
    const uint32_t stage_off = stage * Tr::kQBytes;
    constexpr uint32_t kDoFromQ = Tr::kOffDo - Tr::kOffQ;
    const float* lse2 = s_lse + stage * Tr::kBlockM;
    const float* dpsum = s_dpsum + stage * Tr::kBlockM;

    // ---- S = Q K^T, dP = dO V^T; P and dS into shared memory ---------------------------------
    {
      float s_acc[Tr::kSdpFragsM][Tr::kSdpFragsN][4];
      float dp_acc[Tr::kSdpFragsM][Tr::kSdpFragsN][4];
      zero(s_acc);
      // ldmatrix bases (gemm_bwd.cuh): dO = Q + kDoFromQ, V = K + kKBytes.
      const uint32_t sdp_a = a_base<Tr::kHeadDim>(smem + Tr::kOffQ + stage_off, lane, sdp_row0);
      const uint32_t sdp_b = bt_base<Tr::kHeadDim>(smem + Tr::kOffK, lane, sdp_col0);
      gemm_abt<T, Tr::kSdpFragsM, Tr::kSdpFragsN, Tr::kHeadDim, Tr::kHeadDim, Tr::kHeadDim>(s_acc, sdp_a, sdp_b);
      zero(dp_acc);
      gemm_abt<T, Tr::kSdpFragsM, Tr::kSdpFragsN, Tr::kHeadDim, Tr::kHeadDim, Tr::kHeadDim>(
          dp_acc, sdp_a + kDoFromQ, sdp_b + Tr::kKBytes);

      const int m0 = cur.m0, hq = cur.hq;
      const uint32_t vis = cuda::StepVisibility<Tr::kSdpFragsM, Tr::kSdpFragsN, Tr::kBlockM, Tr::kBlockN>::compute(p, cur.partial, cur.mask_bh, cur.q_tile, kv_tile, m0, n0,
                                                       sdp_row0, sdp_col0, lane);
      const cuda::ScoreModLogit2<kMod> mod(p.mod, p.scale, p.scale_log2, b, hq);
      float* dbias = nullptr;  // this head's [Q_LEN, KV_LEN] slice of the fp32 dbias accumulator
      if (kMod == ScoreModKind::kBias && p.dbias_accum != nullptr) {
        const int bb = p.bias_batch == 1 ? 0 : b, hb = p.bias_heads == 1 ? 0 : hq;
        dbias = p.dbias_accum + (static_cast<int64_t>(bb) * p.bias_heads + hb) * p.q_len * int64_t(p.kv_len);
      }
      // Byte offset of this thread's first P element; the others are (base ^ ni * 16) + rows: the
      // warp's kSdpFragsN chunks start at a multiple of kSdpFragsN, so ni only flips chunk bits.
      static_assert((Tr::kSdpFragsN & (Tr::kSdpFragsN - 1)) == 0, "n8 tiles per warp: a power of 2");
      const uint32_t p_base = 2u * swizzle<Tr::kBlockN>(sdp_row0 + g, sdp_col0 + 2 * t);
      unsigned char* s_p = smem_buf + Tr::kOffP;
      unsigned char* s_ds = smem_buf + Tr::kOffDs;
      [[maybe_unused]] cuda::GatherGradRuns<kMod> gather_grads;
#pragma unroll
      for (int mi = 0; mi < Tr::kSdpFragsM; ++mi) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = sdp_row0 + mi * 16 + g + h * 8;
          const float row_lse2 = lse2[row], row_dpsum = dpsum[row];
          const bool row_saw_keys = row_lse2 != INFINITY;  // lse -inf: nothing visible, whatever its scores
#pragma unroll
          for (int ni = 0; ni < Tr::kSdpFragsN; ++ni) {
            const int col = sdp_col0 + ni * 8 + 2 * t;
            float pv[2], dsv[2];
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int idx = (mi * Tr::kSdpFragsN + ni) * 4 + h * 2 + e;
              float dmod;
              [[maybe_unused]] float d_gathered[kMaxHookGathers];
              [[maybe_unused]] int64_t offset[kMaxHookGathers];
              float logit2;
              if constexpr (kMod == ScoreModKind::kLinked) {
                logit2 = mod.logit2(s_acc[mi][ni][h * 2 + e], m0 + row, n0 + col + e, dmod, d_gathered, offset);
              } else {
                logit2 = mod.logit2(s_acc[mi][ni][h * 2 + e], m0 + row, n0 + col + e, dmod);
              }
              const bool visible = (vis >> idx) & 1u;
              // Hidden scores enter the exp as -inf (exp2 gives +0): a select, not a predicated
              // exp plus a zeroing move per element.
              const float pe = ptx::exp2_approx(visible && row_saw_keys ? logit2 - row_lse2 : -INFINITY);
              const float ds = pe * (dp_acc[mi][ni][h * 2 + e] - row_dpsum);
              if (kMod == ScoreModKind::kBias && dbias != nullptr && visible) {
                atomicAdd(dbias + int64_t(m0 + row) * p.kv_len + (n0 + col + e), ds);
              }
              // d loss / d gathered element = dS * d mod / d element, added where the score counts.
              if constexpr (kMod == ScoreModKind::kLinked) {
                if (pe != 0.f) gather_grads.add(p.mod, d_gathered, offset, ds);
              }
              pv[e] = pe;
              dsv[e] = ds * dmod;
            }
            const uint32_t off = (p_base ^ (ni * 16)) + (mi * 16 + h * 8) * Tr::kBlockN * 2;
            *reinterpret_cast<uint32_t*>(s_p + off) = ptx::pack2<T>(pv[0], pv[1]);
            *reinterpret_cast<uint32_t*>(s_ds + off) = ptx::pack2<T>(dsv[0], dsv[1]);
          }
        }
      }
      gather_grads.flush(p.mod);
    }
    __syncthreads();  // (B) P, dS and the walk's new step visible to every warp

    // After (B) the three GEMMs read only P, dS, Q, dO, K: any order is correct. dQ goes first: its
    // fp32 reductions (kBlockM x kHeadDim x 4 bytes per step, through L1 to L2) then drain while the
    // dV / dK GEMMs keep the tensor pipe busy, instead of queueing in front of the next step's loads
    // and ldmatrix. Deterministic mode keeps dV / dK first, so that they hide its semaphore wait.
    // ---- dV += P^T dO, dK += dS^T Q ------------------------------------------------------------
    auto dkv_gemms = [&]() {
      // ldmatrix bases: P^T per 16 kv rows (dS = P + kPBytes), dO per 16 columns (Q = dO - kDoFromQ).
      uint32_t kv_a[Tr::kKvFragsN], kv_b[Tr::kKvFragsD / 2];
#pragma unroll
      for (int mi = 0; mi < Tr::kKvFragsN; ++mi)
        kv_a[mi] = at_base<Tr::kBlockN>(smem + Tr::kOffP, lane, kv_row0 + mi * 16);
#pragma unroll
      for (int np = 0; np < Tr::kKvFragsD / 2; ++np)
        kv_b[np] = b_base<Tr::kHeadDim>(smem + Tr::kOffQ + stage_off, lane, kv_col0 + np * 16);
      gemm_atb<T, Tr::kKvFragsN, Tr::kKvFragsD, Tr::kBlockM, Tr::kBlockN, Tr::kHeadDim>(
          dv_acc, kv_a, 0, kv_b, kDoFromQ);
      gemm_atb<T, Tr::kKvFragsN, Tr::kKvFragsD, Tr::kBlockM, Tr::kBlockN, Tr::kHeadDim>(
          dk_acc, kv_a, Tr::kPBytes, kv_b, 0);
    };

    // ---- dQacc += dS K --------------------------------------------------------------------------
    auto dq_gemm = [&]() {
      float dq_acc[Tr::kDqFragsM][Tr::kDqFragsD][4];
      zero(dq_acc);
      const uint32_t dq_a = a_base<Tr::kBlockN>(smem + Tr::kOffDs, lane, dq_row0);
      uint32_t dq_b[Tr::kDqFragsD / 2];
#pragma unroll
      for (int np = 0; np < Tr::kDqFragsD / 2; ++np)
        dq_b[np] = b_base<Tr::kHeadDim>(smem + Tr::kOffK, lane, dq_col0 + np * 16);
      gemm_ab<T, Tr::kDqFragsM, Tr::kDqFragsD, Tr::kBlockN, Tr::kBlockN, Tr::kHeadDim>(dq_acc, dq_a, dq_b, 0);

      cuda::DqWriter<Tr>::add(p, dq_acc, smem, cur, nxt, b, kv_tile, kv_block_of(p), dq_row0, dq_col0, warp, lane, tid);
    };

    if (p.deterministic) {
      dkv_gemms();
      dq_gemm();
    } else {
      dq_gemm();
      dkv_gemms();
    }
  }
  cuda::DqWriter<Tr>::drain(p);

  store_dkv<Tr>(p, smem_buf, dk_acc, dv_acc, b, blockIdx.x / p.splits, blockIdx.x % p.splits, n0, tid);
}

}  // namespace flashflex::sm80
