// Epilogue of the sm80 forward, per warp: O = acc_o / l rounded to the output dtype, staged
// through the warp's own rows of the (no longer needed) shared Q tile, then written with 16-byte
// coalesced stores; lse (natural log, float32) written by one thread of each row's quad. Rows
// past Q_LEN are never written. A row that saw nothing has inv = 0: out 0, lse -inf.
// Called last by kernel_fwd.cuh with the statistics of softmax.cuh.
#pragma once

#include <cstdint>

#include "cuda/ptx/mma.cuh"

namespace flashflex::sm80 {

template <class Traits>
struct EpilogueFwd {
  using Element = typename Traits::Element;
  static constexpr int kMSlabs = Traits::kMSlabs;
  static constexpr int kNTilesO = Traits::kNTilesO;

  // sQ: the CTA's Q tile; only this warp's rows are touched (no CTA barrier needed).
  // out_rows: out[b, h] (row stride out_stride_t); q_row0: absolute q index of the tile's row 0.
  __device__ static void store(float (&acc_o)[kMSlabs][kNTilesO][4], const float (&inv)[kMSlabs][2],
                               const float (&lse)[kMSlabs][2], Element* sQ, Element* out_rows,
                               int64_t out_stride_t, float* lse_rows, int64_t lse_stride_t, int q_row0, int q_len,
                               int warp, int lane) {
    const int warp_row0 = warp * Traits::kRowsPerWarp;
    __syncwarp();  // this warp's ldmatrix reads of its Q rows are done before they are overwritten
#pragma unroll
    for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int row = warp_row0 + s * 16 + (lane >> 2) + j * 8;
#pragma unroll
        for (int t = 0; t < kNTilesO; ++t) {
          // inv 0 (the row saw nothing) writes 0 even where acc_o holds 0 * NaN (a NaN value behind
          // a masked score, a NaN q row of an invalid EAGLE3 row).
          const bool empty = inv[s][j] == 0.f;
          const uint32_t v = ptx::pack2<Element>(empty ? 0.f : acc_o[s][t][2 * j] * inv[s][j],
                                                 empty ? 0.f : acc_o[s][t][2 * j + 1] * inv[s][j]);
          *reinterpret_cast<uint32_t*>(sQ + Traits::swizzle(row, t) + (lane & 3) * 2) = v;
        }
        const int q = q_row0 + row;
        if (lse_rows != nullptr && (lane & 3) == 0 && q < q_len) lse_rows[q * lse_stride_t] = lse[s][j];
      }
    __syncwarp();
    constexpr int kChunks = Traits::kRowsPerWarp * Traits::kChunksPerRow;
    static_assert(kChunks % 32 == 0, "whole passes of the warp");
#pragma unroll
    for (int i = 0; i < kChunks / 32; ++i) {
      const int idx = i * 32 + lane;
      const int row = warp_row0 + idx / Traits::kChunksPerRow;
      const int chunk = idx % Traits::kChunksPerRow;
      const int q = q_row0 + row;
      if (q < q_len) {
        const uint4 v = *reinterpret_cast<const uint4*>(sQ + Traits::swizzle(row, chunk));
        *reinterpret_cast<uint4*>(out_rows + q * out_stride_t + chunk * Traits::kChunkElems) = v;
      }
    }
  }
};

}  // namespace flashflex::sm80
