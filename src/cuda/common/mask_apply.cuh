// Score modification and masking of one forward step's S fragment (common/fragment.cuh layout),
// per warp:
//   apply_score_mod   s = mod(scale * q.k, q_idx, kv_idx) on every element (skipped for identity)
//   mask_bitmap       partial step: AND with the tile's bitmap words (masked -> -inf)
//   mask_kv_bound     ragged last step: columns at or past KV_LEN -> -inf
// Order (torch flex): the mod first, then the masks. The bitmap layout is in
// include/flashflex/block_mask.hpp; how the words reach shared memory is the architecture's
// (sm80/bitmap_load_fwd.cuh).
#pragma once

#include <cmath>
#include <cstdint>

#include "cuda/common/fragment.cuh"

namespace flashflex::cuda {

template <int kMSlabs, int kNTiles>
struct FragmentMask {
  using Frag = AccFragment<kMSlabs, kNTiles>;

  // q_row0: the absolute q row of the warp's first row; kv_start: the step's first column.
  template <class Mod>
  __device__ static void apply_score_mod(float (&acc_s)[kMSlabs][kNTiles][4], const Mod& mod, float scale,
                                         int q_row0, int kv_start, int lane) {
#pragma unroll
    for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
      for (int t = 0; t < kNTiles; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int q = q_row0 + Frag::row(s, e, lane);
          const int kv = kv_start + Frag::col(t, e, lane);
          acc_s[s][t][e] = mod(acc_s[s][t][e] * scale, q, kv);
        }
  }

  // sBits: the step's first word of row 0 (rows relative to the CTA's first q row, kRowStride words
  // apart); kWords words per row cover the step (32 columns each); warp_row0: the warp's first row.
  template <int kWords, int kRowStride = kWords>
  __device__ static void mask_bitmap(float (&acc_s)[kMSlabs][kNTiles][4], const uint32_t* sBits, int warp_row0,
                                     int lane) {
#pragma unroll
    for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int row = warp_row0 + Frag::row(s, 2 * j, lane);
        uint32_t words[kWords];
#pragma unroll
        for (int w = 0; w < kWords; ++w) words[w] = sBits[row * kRowStride + w];
#pragma unroll
        for (int t = 0; t < kNTiles; ++t)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int col = Frag::col(t, e, lane);  // column inside the step; word t / 4
            if (!((words[t / 4] >> (col & 31)) & 1u)) acc_s[s][t][2 * j + e] = -INFINITY;
          }
      }
  }

  __device__ static void mask_kv_bound(float (&acc_s)[kMSlabs][kNTiles][4], int kv_start, int kv_len, int lane) {
#pragma unroll
    for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
      for (int t = 0; t < kNTiles; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int kv = kv_start + Frag::col(t, e, lane);
          if (kv >= kv_len) acc_s[s][t][e] = -INFINITY;
        }
  }
};

}  // namespace flashflex::cuda
