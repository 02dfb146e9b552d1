// Score modification and masking of one forward step's S fragment, per warp, in the mma
// accumulator layout (element e of n-tile t of slab s sits at warp row s*16 + lane/4 + 8*(e/2),
// step column t*8 + 2*(lane%4) + e%2):
//   load_bits         partial step: cp.async of the step's bitmap words (kBitmapWordsPerStep per
//                     q row) into the stage's slot, issued with that stage's K and V
//   apply_score_mod   s = mod(scale * q.k, q_idx, kv_idx) on every element (skipped for identity)
//   mask_bitmap       partial step: AND with the tile's bitmap (masked -> -inf)
//   mask_kv_bound     ragged last step: columns at or past KV_LEN -> -inf
// Order (torch flex): the mod first, then the masks. Called by kernel_fwd.cuh between gemm_qk and
// the softmax; the bitmap layout is in include/flashflex/block_mask.hpp.
#pragma once

#include <cmath>
#include <cstdint>

#include "cuda/ptx/cp_async.cuh"
#include "flashflex/block_mask.hpp"

namespace flashflex::sm80 {

template <class Traits>
struct MaskFwd {
  static constexpr int kMSlabs = Traits::kMSlabs;
  static constexpr int kNTilesS = Traits::kNTilesS;
  static constexpr int kWords = Traits::kBitmapWordsPerStep;

  // sBits: [kBlockM][kWords] words; bitmap: the tile's [kTileSize][kBitmapWordsPerRow] words, of
  // which this CTA's rows start at bitmap_row.
  __device__ static void load_bits(uint32_t* sBits, const uint32_t* bitmap, int bitmap_row, int bitmap_col,
                                   int tid) {
    const int word0 = bitmap_col / 32;
    for (int r = tid; r < Traits::kBlockM; r += Traits::kNumThreads) {
      const uint32_t dst = ptx::smem_addr(sBits + r * kWords);
      const uint32_t* src = bitmap + (bitmap_row + r) * kBitmapWordsPerRow + word0;
      if constexpr (kWords == 4) {
        ptx::cp_async_16(dst, src, true);
      } else if constexpr (kWords == 2) {
        ptx::cp_async_8(dst, src, true);
      } else {
        static_assert(kWords == 1, "a step covers 32, 64 or 128 columns");
        ptx::cp_async_4(dst, src, true);
      }
    }
  }

  template <class Mod>
  __device__ static void apply_score_mod(float (&acc_s)[kMSlabs][kNTilesS][4], const Mod& mod, float scale,
                                         int q_row0, int kv_start, int lane) {
#pragma unroll
    for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
      for (int t = 0; t < kNTilesS; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int q = q_row0 + s * 16 + (lane >> 2) + (e >> 1) * 8;
          const int kv = kv_start + t * 8 + (lane & 3) * 2 + (e & 1);
          acc_s[s][t][e] = mod(acc_s[s][t][e] * scale, q, kv);
        }
  }

  // sBits: the stage's slot (see load_bits), rows relative to the CTA's first q row.
  __device__ static void mask_bitmap(float (&acc_s)[kMSlabs][kNTilesS][4], const uint32_t* sBits, int warp,
                                     int lane) {
#pragma unroll
    for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int row = warp * Traits::kRowsPerWarp + s * 16 + (lane >> 2) + j * 8;
        uint32_t words[kWords];
#pragma unroll
        for (int w = 0; w < kWords; ++w) words[w] = sBits[row * kWords + w];
#pragma unroll
        for (int t = 0; t < kNTilesS; ++t)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int col = t * 8 + (lane & 3) * 2 + e;  // column inside the step; word t / 4
            if (!((words[t / 4] >> (col & 31)) & 1u)) acc_s[s][t][2 * j + e] = -INFINITY;
          }
      }
  }

  __device__ static void mask_kv_bound(float (&acc_s)[kMSlabs][kNTilesS][4], int kv_start, int kv_len, int lane) {
#pragma unroll
    for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
      for (int t = 0; t < kNTilesS; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int kv = kv_start + t * 8 + (lane & 3) * 2 + (e & 1);
          if (kv >= kv_len) acc_s[s][t][e] = -INFINITY;
        }
  }
};

}  // namespace flashflex::sm80
