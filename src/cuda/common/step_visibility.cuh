// Visibility of one backward step's S fragment (common/fragment.cuh layout; the warp's tile of
// kFragsM x kFragsN m16n8 fragments), as one bit per element: bit (mi * kFragsN + ni) * 4 + e.
// A partial tile reads its bitmap (rows and columns past the sequence are 0 there); a full tile
// that reaches past Q_LEN or KV_LEN checks bounds; any other full tile sees everything.
// The bitmap layout is in include/flashflex/block_mask.hpp.
#pragma once

#include <cstdint>

#include "cuda/params.hpp"
#include "flashflex/block_mask.hpp"

namespace flashflex::cuda {

template <int kFragsM, int kFragsN, int kBlockM, int kBlockN>
struct StepVisibility {
  // m0, n0: the step's first q row / key; row0, col0: the warp's first S row / column in the step.
  __device__ static uint32_t compute(const BwdParams& p, bool partial, int mask_bh, int q_tile, int kv_tile, int m0,
                                     int n0, int row0, int col0, int lane) {
    const int g = lane >> 2, t = lane & 3;
    if (partial) {
      const int64_t tile_idx = (static_cast<int64_t>(mask_bh) * p.num_q_tiles + q_tile) * p.num_kv_tiles + kv_tile;
      const int id = __ldg(p.mask.partial_tile_ids + tile_idx);
      // This thread's rows in the tile's bitmap start at row r0; its columns sit in one word.
      const int r0 = m0 % kTileSize + row0 + g, c0 = n0 % kTileSize + col0;
      const uint32_t* bm = p.mask.bitmaps + static_cast<int64_t>(id) * kBitmapWords + r0 * kBitmapWordsPerRow + (c0 >> 5);
      const int bit0 = (c0 & 31) + 2 * t;
      uint32_t vis = 0;
#pragma unroll
      for (int mi = 0; mi < kFragsM; ++mi) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const uint32_t w = __ldg(bm + (mi * 16 + h * 8) * kBitmapWordsPerRow) >> bit0;
#pragma unroll
          for (int ni = 0; ni < kFragsN; ++ni)
#pragma unroll
            for (int e = 0; e < 2; ++e) vis |= ((w >> (ni * 8 + e)) & 1u) << ((mi * kFragsN + ni) * 4 + h * 2 + e);
        }
      }
      return vis;
    }
    if (m0 + kBlockM <= p.q_len && n0 + kBlockN <= p.kv_len) return ~0u;
    // Ragged full tile: rows below row_lim and columns below col_lim (relative to this thread's first).
    const int row_lim = p.q_len - (m0 + row0 + g), col_lim = p.kv_len - (n0 + col0 + 2 * t);
    uint32_t vis = 0;
#pragma unroll
    for (int mi = 0; mi < kFragsM; ++mi)
#pragma unroll
      for (int ni = 0; ni < kFragsN; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const bool in = (mi * 16 + (e >> 1) * 8 < row_lim) && (ni * 8 + (e & 1) < col_lim);
          vis |= static_cast<uint32_t>(in) << ((mi * kFragsN + ni) * 4 + e);
        }
    return vis;
  }
};

}  // namespace flashflex::cuda
