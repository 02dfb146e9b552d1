// The sm80 forward's bitmap words of a partial step: cp.async of kBitmapWordsPerStep words per q
// row into the stage's slot, issued with that stage's K and V (kernel_fwd.cuh); the masking itself
// is common/mask_apply.cuh. The bitmap layout is in include/flashflex/block_mask.hpp.
#pragma once

#include <cstdint>

#include "cuda/ptx/cp_async.cuh"
#include "flashflex/block_mask.hpp"

namespace flashflex::sm80 {

template <class Traits>
struct BitmapLoadFwd {
  static constexpr int kWords = Traits::kBitmapWordsPerStep;

  // sBits: [kBlockM][kWords] words; bitmap: the tile's [kTileSize][kBitmapWordsPerRow] words, of
  // which this CTA's rows start at bitmap_row.
  __device__ static void load(uint32_t* sBits, const uint32_t* bitmap, int bitmap_row, int bitmap_col, int tid) {
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
};

}  // namespace flashflex::sm80
