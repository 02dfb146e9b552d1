// Epilogue of the sm_90 forward, per consumer thread, straight from the wgmma accumulator
// fragment: O = acc_o / l rounded to the output dtype (4-byte streaming stores: a row quad writes 16
// contiguous bytes per n8 tile), lse (natural log, float32) by the quad's first thread; rows past
// Q_LEN are never written. A row that saw nothing has inv = 0: out 0, lse -inf.
#pragma once

#include <cstdint>

#include "cuda/ptx/mma.cuh"

namespace flashflex::sm90 {

template <class Traits>
struct EpilogueFwd {
  using Element = typename Traits::Element;
  static constexpr int kNT = Traits::kNTilesO;

  // out_rows: out[b, h]; q0: absolute q index of the thread's first row (the second is q0 + 8).
  __device__ static void store(const float (&o)[kNT * 4], const float (&inv)[2], const float (&lse)[2],
                               Element* out_rows, int64_t out_stride_t, float* lse_rows, int64_t lse_stride_t, int q0,
                               int q_len, int lane) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int q = q0 + 8 * j;
      if (q >= q_len) continue;
      Element* row = out_rows + q * out_stride_t + 2 * (lane & 3);
#pragma unroll
      for (int n = 0; n < kNT; ++n) {
        // Streaming store (evict-first): out is never re-read here and should not push K/V out of L2.
        // inv 0 (the row saw nothing) writes 0 even where o holds 0 * NaN (a NaN value behind a
        // masked score, a NaN q row of an invalid EAGLE3 row).
        const bool empty = inv[j] == 0.f;
        __stcs(reinterpret_cast<unsigned int*>(row + 8 * n),
               ptx::pack2<Element>(empty ? 0.f : o[4 * n + 2 * j] * inv[j], empty ? 0.f : o[4 * n + 2 * j + 1] * inv[j]));
      }
      if (lse_rows != nullptr && (lane & 3) == 0) lse_rows[q * lse_stride_t] = lse[j];
    }
  }
};

}  // namespace flashflex::sm90
