// The dense float64 oracle of test_reference.cpp: attention forward and backward by explicit
// loops over every (q, kv) pair and a dense visibility array, a full softmax per row. It shares
// no code with the library (no BlockMask, no gather, no score-mod helpers).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "flashflex/mods.hpp"
#include "reference_test_utils.hpp"

namespace flashflex::reference_test {

// One problem, every tensor logical row-major: q [B, Hq, Tq, D], k [B, Hkv, Tk, D],
// v [B, Hkv, Tk, Dv], dout [B, Hq, Tq, Dv], dlse [B, Hq, Tq] (empty: zero),
// bias [bias_batch, bias_heads, Tq, Tk], mask: DenseMask (empty `visible`: all visible).
struct DenseProblem {
  int64_t batch = 1, q_heads = 1, kv_heads = 1, q_len = 1, kv_len = 1, head_dim = 1, v_head_dim = 1;
  double scale = 1.0;
  ScoreModKind mod = ScoreModKind::kNone;
  double softcap = 0.0;
  std::vector<double> alibi_slopes;
  std::vector<double> bias;
  int64_t bias_batch = 1, bias_heads = 1;
  std::vector<double> q, k, v, dout, dlse;
  DenseMask mask;
};

// out [B, Hq, Tq, Dv], lse [B, Hq, Tq], dq/dk/dv like q/k/v, dscore [B, Hq, Tq, Tk]: the
// gradient of the loss w.r.t. each modded score (0 where masked).
struct DenseResult {
  std::vector<double> out, lse, dq, dk, dv, dscore;
};

inline DenseResult dense_attention(const DenseProblem& p) {
  const int64_t group = p.q_heads / p.kv_heads;
  DenseResult r;
  r.out.assign(p.batch * p.q_heads * p.q_len * p.v_head_dim, 0.0);
  r.lse.assign(p.batch * p.q_heads * p.q_len, -kInf);
  r.dq.assign(p.batch * p.q_heads * p.q_len * p.head_dim, 0.0);
  r.dk.assign(p.batch * p.kv_heads * p.kv_len * p.head_dim, 0.0);
  r.dv.assign(p.batch * p.kv_heads * p.kv_len * p.v_head_dim, 0.0);
  r.dscore.assign(p.batch * p.q_heads * p.q_len * p.kv_len, 0.0);
  std::vector<double> score(p.kv_len), dmod(p.kv_len), prob(p.kv_len), dprob(p.kv_len);
  std::vector<uint8_t> seen(p.kv_len);

  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t h = 0; h < p.q_heads; ++h) {
      const int64_t hk = h / group;
      for (int64_t i = 0; i < p.q_len; ++i) {
        const double* qi = &p.q[((b * p.q_heads + h) * p.q_len + i) * p.head_dim];
        const double* doi = &p.dout[((b * p.q_heads + h) * p.q_len + i) * p.v_head_dim];
        double row_max = -kInf;
        for (int64_t j = 0; j < p.kv_len; ++j) {
          seen[j] = p.mask.visible.empty() || p.mask(b, h, i, j);
          const double* kj = &p.k[((b * p.kv_heads + hk) * p.kv_len + j) * p.head_dim];
          double dot = 0.0;
          for (int64_t d = 0; d < p.head_dim; ++d) dot += qi[d] * kj[d];
          const double raw = p.scale * dot;
          double s = raw;
          dmod[j] = 1.0;
          if (p.mod == ScoreModKind::kSoftcap) {
            s = p.softcap * std::tanh(raw / p.softcap);
            dmod[j] = 1.0 / (std::cosh(raw / p.softcap) * std::cosh(raw / p.softcap));
          } else if (p.mod == ScoreModKind::kAlibi) {
            s = raw + p.alibi_slopes[h] * static_cast<double>(j - i);
          } else if (p.mod == ScoreModKind::kBias) {
            const int64_t bb = p.bias_batch == 1 ? 0 : b, bh = p.bias_heads == 1 ? 0 : h;
            s = raw + p.bias[((bb * p.bias_heads + bh) * p.q_len + i) * p.kv_len + j];
          }
          score[j] = s;
          if (seen[j]) row_max = std::max(row_max, s);
        }
        if (row_max == -kInf) continue;  // fully masked row: out 0, lse -inf, no gradient

        double denom = 0.0;
        for (int64_t j = 0; j < p.kv_len; ++j) {
          prob[j] = seen[j] ? std::exp(score[j] - row_max) : 0.0;
          denom += prob[j];
        }
        double delta = 0.0;
        for (int64_t j = 0; j < p.kv_len; ++j) {
          prob[j] /= denom;
          const double* vj = &p.v[((b * p.kv_heads + hk) * p.kv_len + j) * p.v_head_dim];
          double* oi = &r.out[((b * p.q_heads + h) * p.q_len + i) * p.v_head_dim];
          dprob[j] = 0.0;
          for (int64_t d = 0; d < p.v_head_dim; ++d) {
            oi[d] += prob[j] * vj[d];
            dprob[j] += doi[d] * vj[d];
          }
          delta += prob[j] * dprob[j];
        }
        r.lse[(b * p.q_heads + h) * p.q_len + i] = row_max + std::log(denom);

        const double dlse_i = p.dlse.empty() ? 0.0 : p.dlse[(b * p.q_heads + h) * p.q_len + i];
        for (int64_t j = 0; j < p.kv_len; ++j) {
          if (!seen[j]) continue;
          const double ds = prob[j] * (dprob[j] - delta + dlse_i);
          r.dscore[((b * p.q_heads + h) * p.q_len + i) * p.kv_len + j] = ds;
          const double ds_raw = ds * dmod[j];
          const double* kj = &p.k[((b * p.kv_heads + hk) * p.kv_len + j) * p.head_dim];
          double* dqi = &r.dq[((b * p.q_heads + h) * p.q_len + i) * p.head_dim];
          double* dkj = &r.dk[((b * p.kv_heads + hk) * p.kv_len + j) * p.head_dim];
          double* dvj = &r.dv[((b * p.kv_heads + hk) * p.kv_len + j) * p.v_head_dim];
          for (int64_t d = 0; d < p.head_dim; ++d) {
            dqi[d] += p.scale * ds_raw * kj[d];
            dkj[d] += p.scale * ds_raw * qi[d];
          }
          for (int64_t d = 0; d < p.v_head_dim; ++d) dvj[d] += prob[j] * doi[d];
        }
      }
    }
  }
  return r;
}

// dscore summed over the dims that a [bias_batch, bias_heads, Tq, Tk] bias broadcasts.
inline std::vector<double> sum_to_bias_shape(const DenseProblem& p, const std::vector<double>& dscore,
                                             int64_t bias_batch, int64_t bias_heads) {
  const int64_t plane = p.q_len * p.kv_len;
  std::vector<double> dbias(bias_batch * bias_heads * plane, 0.0);
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t h = 0; h < p.q_heads; ++h) {
      const int64_t bb = bias_batch == 1 ? 0 : b, bh = bias_heads == 1 ? 0 : h;
      for (int64_t e = 0; e < plane; ++e) {
        dbias[(bb * bias_heads + bh) * plane + e] += dscore[(b * p.q_heads + h) * plane + e];
      }
    }
  }
  return dbias;
}

}  // namespace flashflex::reference_test
