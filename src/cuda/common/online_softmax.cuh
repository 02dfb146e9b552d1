// Online softmax on S fragments in the accumulator layout that mma.sync m16n8 and wgmma share
// (common/fragment.cuh): each thread holds two rows per 16-row slab (lane/4 and lane/4 + 8), and a
// row's 4 threads are one quad, so row max and sum need two xor-shuffles. Per row (FA2/FA3):
//
//   m' = max(m, rowmax S);  mu = (m' == -inf) ? 0 : m'       (a fully masked row stays at 0)
//   alpha = exp2((m - mu) * sl2);  P = exp2(S * sl2 - mu * sl2)   (one FFMA + EX2 per element)
//   l = alpha * l + rowsum P;  O *= alpha;  m = m'
//   finish: l = quad sum; inv = (l == 0) ? 0 : 1 / l; lse = inv ? m * unit + ln l : -inf (NaN l: NaN)
//
// Scores are in "units" where sl2 = unit * log2(e): raw q.k with unit = scale when there is no
// score mod and scale > 0 (the scale enters only the FFMA), scaled (modified) natural-log scores
// with unit = 1 otherwise: raw units need scale > 0, since only then is the max of the raw scores
// that of the scaled ones, and a masked -inf times sl2 = 0 would be NaN.
// The three steps of a row are separate calls (max_and_rescale, exponentiate, rescale_o) so that
// a consumer can interleave them with its GEMMs: update() runs them row after row (sm80),
// exponentiate_rows then rescale_o_rows once the previous P V is done (sm90).
#pragma once

#include <cmath>

#include "cuda/ptx/math.cuh"

namespace flashflex::cuda {

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

  // Step 1 of row (s, j): the new running max; returns alpha, the factor of the old O and l, and
  // sets mu_scaled (the max in exp2 units, 0 for a row that saw nothing yet).
  __device__ float max_and_rescale(const float (&acc_s)[kMSlabs][kNTiles][4], int s, int j, float sl2,
                                   float& mu_scaled) {
    float m_new = row_max[s][j];
#pragma unroll
    for (int t = 0; t < kNTiles; ++t) m_new = fmaxf(m_new, fmaxf(acc_s[s][t][2 * j], acc_s[s][t][2 * j + 1]));
    m_new = fmaxf(m_new, __shfl_xor_sync(0xffffffffu, m_new, 1));
    m_new = fmaxf(m_new, __shfl_xor_sync(0xffffffffu, m_new, 2));
    mu_scaled = (m_new == -INFINITY ? 0.f : m_new) * sl2;
    const float alpha = ptx::exp2_approx(row_max[s][j] * sl2 - mu_scaled);  // old -inf -> 0
    row_max[s][j] = m_new;
    return alpha;
  }

  // Step 2 of row (s, j): scores into unnormalised probabilities; l = alpha * l + rowsum P.
  __device__ void exponentiate(float (&acc_s)[kMSlabs][kNTiles][4], int s, int j, float sl2, float mu_scaled,
                               float alpha) {
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
  }

  // Step 3 of row (s, j): O *= alpha.
  template <int kNTilesO>
  __device__ static void rescale_o(float (&acc_o)[kMSlabs][kNTilesO][4], int s, int j, float alpha) {
#pragma unroll
    for (int t = 0; t < kNTilesO; ++t) acc_o[s][t][2 * j] *= alpha, acc_o[s][t][2 * j + 1] *= alpha;
  }

  // Steps 1 and 2 of every row; alpha[s][j] for a later rescale_o_rows (a consumer that rescales
  // O only once the previous P V product is done).
  __device__ void exponentiate_rows(float (&acc_s)[kMSlabs][kNTiles][4], float sl2, float (&alpha)[kMSlabs][2]) {
#pragma unroll
    for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        float mu_scaled;
        alpha[s][j] = max_and_rescale(acc_s, s, j, sl2, mu_scaled);
        exponentiate(acc_s, s, j, sl2, mu_scaled, alpha[s][j]);
      }
  }

  template <int kNTilesO>
  __device__ static void rescale_o_rows(float (&acc_o)[kMSlabs][kNTilesO][4], const float (&alpha)[kMSlabs][2]) {
#pragma unroll
    for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
      for (int j = 0; j < 2; ++j) rescale_o(acc_o, s, j, alpha[s][j]);
  }

  // All three steps: acc_s into probabilities (fp32, unnormalised), acc_o rescaled per row.
  template <int kNTilesO>
  __device__ void update(float (&acc_s)[kMSlabs][kNTiles][4], float (&acc_o)[kMSlabs][kNTilesO][4], float sl2) {
#pragma unroll
    for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        float mu_scaled;
        const float alpha = max_and_rescale(acc_s, s, j, sl2, mu_scaled);
        exponentiate(acc_s, s, j, sl2, mu_scaled, alpha);
        rescale_o(acc_o, s, j, alpha);
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
        // Every P of a fully masked row is exp2(-inf) = 0. A NaN l (a NaN or inf score) is not
        // such a row: it stays NaN in out and lse, as the dense computation gives.
        const bool empty = l == 0.f;
        inv[s][j] = empty ? 0.f : 1.f / l;
        lse[s][j] = empty ? -INFINITY : row_max[s][j] * unit + logf(l);
      }
  }
};

}  // namespace flashflex::cuda
