// The sm80 forward kernel (FlashAttention-2 scheme, mma.sync) and its launcher. One CTA per
// (kBlockM rows of q, q head, batch); heaviest q blocks first (a causal mask gives the last tiles
// the most kv steps). Per CTA:
//   cursor  common/kv_cursor.cuh       the kv steps: partial tiles (bitmap), then full tiles
//   loads   mainloop_fwd.cuh           Q once; K, V of step i+1 into the other stage while step i
//           bitmap_load_fwd.cuh        computes; a partial step's bitmap words with them
//   S       mainloop_fwd.cuh           gemm_qk
//   mask    common/mask_apply.cuh      score mod (common/score_mod.cuh), bitmap, KV_LEN bound
//   softmax common/online_softmax.cuh  online softmax, O rescale
//   O       mainloop_fwd.cuh           gemm_pv with P in registers
//   store   epilogue_fwd.cuh           out, lse
// The kRowLocal variant (EAGLE3, RowLocalKeys in cuda/params.hpp) skips CTAs whose rows are all
// past the sample's valid length and folds the row-local keys into the softmax after the loop
// (common/row_local_fold.cuh). The launcher is sm80/launch_fwd.cuh.
// Pipeline: one group of cp.async per step (K and V together), two stages, one CTA barrier per
// step: wait(step i) ; barrier (data of i visible to all; everyone is past step i-1, so its stage
// is free) ; issue step i+1 into that stage ; compute step i.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common/kv_cursor.cuh"
#include "cuda/common/mask_apply.cuh"
#include "cuda/common/online_softmax.cuh"
#include "cuda/common/row_local_fold.cuh"
#include "cuda/common/score_mod.cuh"
#include "cuda/params.hpp"
#include "cuda/sm80/bitmap_load_fwd.cuh"
#include "cuda/sm80/epilogue_fwd.cuh"
#include "cuda/sm80/kernel_traits_fwd.cuh"
#include "cuda/sm80/mainloop_fwd.cuh"

namespace flashflex::sm80 {

template <class Traits, ScoreModKind kMod, bool kRowLocal>
__global__ void __launch_bounds__(Traits::kNumThreads, Traits::kMinBlocksPerSm)
    fwd_kernel(const __grid_constant__ cuda::FwdParams p) {
  static_assert(!kRowLocal || kMod == ScoreModKind::kNone, "the row-local keys take no score mod");
  using Element = typename Traits::Element;
  using Mainloop = MainloopFwd<Traits>;
  using Mask = cuda::FragmentMask<Traits::kMSlabs, Traits::kNTilesS>;
  using Mod = cuda::ScoreModOp<kMod>;
  constexpr int kMSlabs = Traits::kMSlabs;

  // 1 KiB alignment: the xor addressing of mainloop_fwd.cuh needs tiles aligned to a row group.
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  Element* sK = reinterpret_cast<Element*>(smem_raw) + Traits::kQOwnElems;  // [kStages][kBlockN, D]
  // [kBlockM, D]: its own region, or K's stage 1 (kQAliasesK, kernel_traits_fwd.cuh).
  Element* sQ = Traits::kQAliasesK ? sK + Traits::kKVElems : reinterpret_cast<Element*>(smem_raw);
  Element* sV = sK + Traits::kStages * Traits::kKVElems;     // [kStages][kBlockN, D]
  uint32_t* sBits = reinterpret_cast<uint32_t*>(sV + Traits::kStages * Traits::kKVElems);  // [kStages][kBitsWords]
  if (ptx::smem_addr(smem_raw) % 1024 != 0) __trap();  // broken invariant of the xor addressing

  // Block -> (q block, head h, batch b): heads and samples fastest, q blocks from the last one.
  // q block mb covers rows [mb * kBlockM, +kBlockM) of mask tile m = mb / kMBlocksPerTile.
  const int bh_count = p.batch * p.q_heads;
  const int bh = blockIdx.x % bh_count;
  const int mb = p.num_q_tiles * Traits::kMBlocksPerTile - 1 - static_cast<int>(blockIdx.x / bh_count);
  const int m = mb / Traits::kMBlocksPerTile;
  const int bitmap_row = (mb % Traits::kMBlocksPerTile) * Traits::kBlockM;  // first row inside tile m
  const int b = bh / p.q_heads;
  const int h = bh % p.q_heads;
  const int hkv = h / p.kv_group;
  const int q_row0 = mb * Traits::kBlockM;

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;

  const Element* q = static_cast<const Element*>(p.q.data) + b * p.q.stride_b + h * p.q.stride_h;
  const Element* k = static_cast<const Element*>(p.k.data) + b * p.k.stride_b + hkv * p.k.stride_h;
  const Element* v = static_cast<const Element*>(p.v.data) + b * p.v.stride_b + hkv * p.v.stride_h;

  const Mod mod(p.mod, b, h);
  // Units of the running max (online_softmax.cuh): raw q.k without a mod when scale > 0, scaled
  // (and modified) scores otherwise.
  const bool raw_units = Mod::kIsIdentity && p.scale > 0.f;
  const float unit = raw_units ? p.scale : 1.f;
  const float sl2 = unit * cuda::kLog2e;

  float acc_o[kMSlabs][Traits::kNTilesO][4];
#pragma unroll
  for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
    for (int t = 0; t < Traits::kNTilesO; ++t)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_o[s][t][e] = 0.f;
  cuda::OnlineSoftmax<kMSlabs, Traits::kNTilesS> softmax;
  softmax.init();

  const int valid_rows = kRowLocal ? p.row_local.limit.valid_rows(b, p.q_len) : p.q_len;
  cuda::KvStepCursor<Traits::kBlockN> cursor(p, b, h, m);
  if (cursor.valid() && q_row0 < valid_rows) {
    // Issues the loads of step `st` into stage `stage` (K, V and, for a partial step, its bits).
    auto load_step = [&](const cuda::KvStep& st, int stage) {
      const int off = stage * Traits::kKVElems;
      Mainloop::template load_rows<Traits::kBlockN>(sK + off, k, p.k.stride_t, st.kv_start, p.kv_len, tid);
      Mainloop::template load_rows<Traits::kBlockN>(sV + off, v, p.v.stride_t, st.kv_start, p.kv_len, tid);
      if (st.bitmap_id >= 0) {
        const uint32_t* bitmap = p.mask.bitmaps + static_cast<int64_t>(st.bitmap_id) * kBitmapWords;
        BitmapLoadFwd<Traits>::load(sBits + stage * Traits::kBitsWords, bitmap, bitmap_row, st.kv_start % kTileSize, tid);
      }
    };
    const uint32_t q_addr = Mainloop::q_base(sQ, warp, lane);
    const uint32_t k_addr = Mainloop::k_base(sK, lane);
    const uint32_t v_addr = Mainloop::v_base(sV, lane);
    constexpr uint32_t kKVBytes = Traits::kKVElems * sizeof(Element);
    cuda::KvStep cur = cursor.step();
    Mainloop::template load_rows<Traits::kBlockM>(sQ, q, p.q.stride_t, q_row0, p.q_len, tid);
    ptx::cp_async_commit();
    load_step(cur, 0);
    ptx::cp_async_commit();
    // Q fragments in registers (kQInRegs): wait for Q alone; each warp reads only its own rows.
    uint32_t q_frags[kMSlabs][Traits::kQInRegs ? Mainloop::kKSteps : 1][4];
    if constexpr (Traits::kQInRegs) {
      ptx::cp_async_wait<1>();
      __syncthreads();
      Mainloop::load_q_frags(q_frags, q_addr);
    }

    for (int stage = 0;; stage ^= 1) {
      ptx::cp_async_wait<0>();
      __syncthreads();  // step `cur` visible to all; everyone is past the step that used stage ^ 1
      cursor.advance();
      const bool has_next = cursor.valid();
      cuda::KvStep next = cur;
      if (has_next) {
        next = cursor.step();
        load_step(next, stage ^ 1);
      }
      ptx::cp_async_commit();

      float acc_s[kMSlabs][Traits::kNTilesS][4];
      if constexpr (Traits::kQInRegs) {
        Mainloop::gemm_qk(acc_s, q_frags, k_addr + stage * kKVBytes);
      } else {
        Mainloop::gemm_qk(acc_s, q_addr, k_addr + stage * kKVBytes);
      }
      if (!raw_units) {  // always for a mod; for the identity only when scale <= 0 (warp-uniform)
        Mask::apply_score_mod(acc_s, mod, p.scale, q_row0 + warp * Traits::kRowsPerWarp, cur.kv_start, lane);
      }
      if (cur.bitmap_id >= 0) {
        Mask::template mask_bitmap<Traits::kBitmapWordsPerStep>(acc_s, sBits + stage * Traits::kBitsWords,
                                                                  warp * Traits::kRowsPerWarp, lane);
      }
      if (cur.kv_start + Traits::kBlockN > p.kv_len) Mask::mask_kv_bound(acc_s, cur.kv_start, p.kv_len, lane);
      softmax.update(acc_s, acc_o, sl2);
      Mainloop::gemm_pv(acc_o, acc_s, v_addr + stage * kKVBytes);

      if (!has_next) break;
      cur = next;
    }
  }

  if constexpr (kRowLocal) {
    cuda::RowLocalFold<Element, kMSlabs, Traits::kNTilesO>::fold(softmax, acc_o, p, b, h, hkv, q_row0,
                                                                 warp * Traits::kRowsPerWarp, valid_rows, sl2,
                                                                 raw_units ? 1.f : p.scale, lane);
  }
  float inv[kMSlabs][2], lse[kMSlabs][2];
  softmax.finish(inv, lse, unit);
  // O is staged in sQ: when that is K's stage 1, other warps may still read it in their last step.
  if constexpr (Traits::kQAliasesK) __syncthreads();
  Element* out = static_cast<Element*>(p.out.data) + b * p.out.stride_b + h * p.out.stride_h;
  float* lse_rows = p.lse.data != nullptr ? p.lse.data + b * p.lse.stride_b + h * p.lse.stride_h : nullptr;
  EpilogueFwd<Traits>::store(acc_o, inv, lse, sQ, out, p.out.stride_t, lse_rows, p.lse.stride_t, q_row0, p.q_len,
                             warp, lane);
}

}  // namespace flashflex::sm80
