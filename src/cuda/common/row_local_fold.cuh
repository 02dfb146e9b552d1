// The EAGLE3 row-local keys in the forward (include/flashflex/eagle3.hpp): after the kv loop over
// block 0, each row's diagonal keys K_j[q] (1 <= j <= count) join the same online softmax as one
// more column each. A row lives in a quad of the accumulator layout (common/fragment.cuh), each
// thread owning columns 8 c + 2 (lane % 4) + {0, 1} of O: it reads those columns of q, K_j[q] and
// V_j[q] straight from global memory (one 4-byte load each, a quad covering 16 contiguous
// bytes), dots, quad-shuffles the dot, then rescales and updates its part of the row state.
// Rows at or past the sample's valid length (RowLocalKeys::limit) end with an empty row state,
// which online_softmax.cuh's finish turns into out 0, lse -inf. O(count * rows * D) work, no tensor-core tile.
#pragma once

#include <cstdint>

#include "cuda/ptx/math.cuh"
#include "cuda/ptx/mma.cuh"
#include "cuda/params.hpp"

namespace flashflex::cuda {

template <typename Element, int kMSlabs, int kNTilesO>
struct RowLocalFold {
  __device__ static float2 load_pair(const Element* row, int col) {
    return ptx::unpack2<Element>(*reinterpret_cast<const uint32_t*>(row + col));
  }

  // warp_row0: the tile-relative first row of the warp, q_row0: the absolute row of tile row 0;
  // sl2: as the kernel's (online_softmax.cuh); dot_unit: 1 in raw q.k units, scale in scaled units.
  template <class Softmax>
  __device__ static void fold(Softmax& softmax, float (&acc_o)[kMSlabs][kNTilesO][4], const FwdParams& p, int b,
                              int h, int hkv, int q_row0, int warp_row0, int valid_rows, float sl2,
                              float dot_unit, int lane) {
    const RowLocalKeys& keys = p.row_local;
    const Element* q_head = static_cast<const Element*>(p.q.data) + b * p.q.stride_b + h * p.q.stride_h;
    const int col0 = 2 * (lane & 3);
#pragma unroll
    for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int q = q_row0 + warp_row0 + s * 16 + (lane >> 2) + j * 8;
        const bool valid = q < valid_rows;
        const int64_t t = valid ? q : 0;  // rows past the end read row 0 and discard it
        const Element* q_row = q_head + t * p.q.stride_t;
        for (int i = 0; i < keys.count; ++i) {  // warp-uniform: the shuffles see every lane
          const TensorView& kb = keys.k[i];
          const Element* k_row =
              static_cast<const Element*>(kb.data) + b * kb.stride_b + hkv * kb.stride_h + t * kb.stride_t;
          float dot = 0.f;
#pragma unroll
          for (int c = 0; c < kNTilesO; ++c) {
            const float2 x = load_pair(q_row, c * 8 + col0), y = load_pair(k_row, c * 8 + col0);
            dot = fmaf(x.x, y.x, fmaf(x.y, y.y, dot));
          }
          dot += __shfl_xor_sync(0xffffffffu, dot, 1);
          dot += __shfl_xor_sync(0xffffffffu, dot, 2);
          dot *= dot_unit;
          if (!valid) continue;
          const float m_new = fmaxf(softmax.row_max[s][j], dot);
          const float alpha = ptx::exp2_approx((softmax.row_max[s][j] - m_new) * sl2);  // old -inf -> 0
          const float pr = ptx::exp2_approx((dot - m_new) * sl2);
          softmax.row_max[s][j] = m_new;
          // row_sum holds per-thread partials, quad-summed by finish: one thread adds pr.
          softmax.row_sum[s][j] = fmaf(softmax.row_sum[s][j], alpha, (lane & 3) == 0 ? pr : 0.f);
          const TensorView& vb = keys.v[i];
          const Element* v_row =
              static_cast<const Element*>(vb.data) + b * vb.stride_b + hkv * vb.stride_h + t * vb.stride_t;
#pragma unroll
          for (int c = 0; c < kNTilesO; ++c) {
            const float2 y = load_pair(v_row, c * 8 + col0);
            acc_o[s][c][2 * j] = fmaf(pr, y.x, acc_o[s][c][2 * j] * alpha);
            acc_o[s][c][2 * j + 1] = fmaf(pr, y.y, acc_o[s][c][2 * j + 1] * alpha);
          }
        }
        if (!valid) softmax.row_sum[s][j] = 0.f;  // finish: inv 0 (out 0), lse -inf
      }
  }
};

}  // namespace flashflex::cuda
