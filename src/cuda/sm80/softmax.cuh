// Online softmax of the sm80 forward (KERNEL_NOTES.md section 2), per warp, on S fragments in the
// mma accumulator layout: each thread holds two rows per m16 slab (lane/4 and lane/4 + 8), and a
// row's 4 threads are one quad, so row max and sum need two xor-shuffles.
//
//   m' = max(m, rowmax S);  mu = (m' == -inf) ? 0 : m'       (a fully masked row stays at 0)
//   alpha = exp2((m - mu) * sl2);  P = exp2(S * sl2 - mu * sl2)   (one FFMA + EX2 per element)
//   l = alpha * l + rowsum P;  O *= alpha;  m = m'
//   finish: l = quad sum; inv = (l == 0 or NaN) ? 0 : 1 / l; lse = inv ? m * unit + ln l : -inf
//
// Scores are in "units" where sl2 = unit * log2(e): raw q.k with unit = scale when there is no
// score mod (the scale enters only the FFMA), modified natural-log scores with unit = 1 otherwise.
// Used by kernel_fwd.cuh; the output side (O * inv, lse store) is epilogue_fwd.cuh.
#pragma once

#include <cmath>

#include "cuda/ptx/math.cuh"

namespace flashflex::sm80 {

template <int kMSlabs, int kNTiles>
struct OnlineSoftmax {
  float row_max[kMSlabs][2];
  float row_sum[kMSlabs][2];  // per-thread partial sums until finish()

  __device__ void init() {
#pragma unroll
    for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
      for (int j = 0; j < 2; ++j) row_max[s][j] = -INFINITY, row_sum[s][j] = 0.f;
  }

  // Turns acc_s into probabilities (fp32, unnormalised) and rescales acc_o by alpha per row.
  template <int kNTilesO>
  __device__ void update(float (&acc_s)[kMSlabs][kNTiles][4], float (&acc_o)[kMSlabs][kNTilesO][4], float sl2) {
#pragma unroll
    for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        float m_new = row_max[s][j];
#pragma unroll
        for (int t = 0; t < kNTiles; ++t) m_new = fmaxf(m_new, fmaxf(acc_s[s][t][2 * j], acc_s[s][t][2 * j + 1]));
        m_new = fmaxf(m_new, __shfl_xor_sync(0xffffffffu, m_new, 1));
        m_new = fmaxf(m_new, __shfl_xor_sync(0xffffffffu, m_new, 2));
        const float mu_scaled = (m_new == -INFINITY ? 0.f : m_new) * sl2;
        const float alpha = ptx::exp2_approx(row_max[s][j] * sl2 - mu_scaled);  // old -inf -> 0
        row_max[s][j] = m_new;
        float sum = 0.f;
#pragma unroll
        for (int t = 0; t < kNTiles; ++t)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float p = ptx::exp2_approx(fmaf(acc_s[s][t][2 * j + e], sl2, -mu_scaled));
            acc_s[s][t][2 * j + e] = p;
            sum += p;
          }
        row_sum[s][j] = fmaf(row_sum[s][j], alpha, sum);
#pragma unroll
        for (int t = 0; t < kNTilesO; ++t) acc_o[s][t][2 * j] *= alpha, acc_o[s][t][2 * j + 1] *= alpha;
      }
  }

  // Completes the row sums; inv[s][j] = 1 / l (0 for a row that saw nothing) and lse[s][j] in
  // natural log (-inf for such a row). `unit` converts the running max to natural-log units.
  __device__ void finish(float (&inv)[kMSlabs][2], float (&lse)[kMSlabs][2], float unit) {
#pragma unroll
    for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        float l = row_sum[s][j];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        const bool empty = !(l > 0.f);  // 0 or NaN
        inv[s][j] = empty ? 0.f : 1.f / l;
        lse[s][j] = empty ? -INFINITY : row_max[s][j] * unit + logf(l);
      }
  }
};

}  // namespace flashflex::sm80
