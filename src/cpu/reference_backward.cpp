// CPU reference backward: dq, dk, dv (and dbias for the bias score mod) in float64, with the
// probabilities recomputed from q, k and the score mod. args.out and args.lse are inputs for
// parity with the kernels' API only: they are not read, so a forward run in lower precision
// cannot leak its rounding into the oracle's gradients.
//   P = softmax(mask(mod(s_raw))),  s_raw = scale * q k^T
//   dP_ij = dO_i . v_j,  D_i = sum_j P_ij dP_ij,  dS_ij = P_ij (dP_ij - D_i + dlse_i)
//   dq_i = scale sum_j dS_ij mod'(s_raw_ij) k_j,  dk_j = scale sum_i dS_ij mod'(s_raw_ij) q_i,
//   dv_j = sum_i P_ij dO_i,  dbias = dS summed over the bias's broadcast dims.
// One task per (batch, kv head) group on parallel_for.hpp: a task owns every query head of its
// group, so dk and dv are summed in a fixed order without atomics. Rows are scored by
// row_scores.hpp. Called by flashflex::backward (src/api/attention.cpp) after validation.
#include "cpu/reference.hpp"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/parallel_for.hpp"
#include "cpu/row_scores.hpp"
#include "cpu/strided_io.hpp"

namespace flashflex::cpu {
namespace {

struct BackwardShape {
  int64_t batch, q_heads, kv_heads, group_size, q_len, kv_len, head_dim, v_head_dim;
};

BackwardShape shape_of(const BackwardArgs& args) {
  BackwardShape s;
  s.batch = args.q.sizes[0];
  s.q_heads = args.q.sizes[1];
  s.kv_heads = args.k.sizes[1];
  s.group_size = s.q_heads / s.kv_heads;
  s.q_len = args.q.sizes[2];
  s.kv_len = args.k.sizes[2];
  s.head_dim = args.q.sizes[3];
  s.v_head_dim = args.v.sizes[3];
  return s;
}

// dbias of a bias that broadcasts over batch or heads sums several groups' dS into one element.
// Each group therefore adds into its own buffer, (bias heads of the group, q_len, kv_len), and
// the buffers are summed in group order afterwards (reduce_dbias): deterministic, no atomics.
int64_t dbias_heads_per_group(const BackwardArgs& args, const BackwardShape& s) {
  return args.score_mod.bias.sizes[1] == 1 ? 1 : s.group_size;
}

void backward_group(const BackwardArgs& args, double scale, const BackwardShape& shape, int64_t b,
                    int64_t kv_head, std::vector<double>* dbias_partial) {
  const int64_t q_len = shape.q_len, kv_len = shape.kv_len;
  const int64_t head_dim = shape.head_dim, v_head_dim = shape.v_head_dim;

  std::vector<double> k(kv_len * head_dim);     // (kv_len, head_dim)
  std::vector<double> kt(head_dim * kv_len);    // (head_dim, kv_len)
  std::vector<double> vt(v_head_dim * kv_len);  // (v_head_dim, kv_len)
  gather_matrix(args.k, b, kv_head, k.data());
  gather_matrix_transposed(args.k, b, kv_head, kt.data());
  gather_matrix_transposed(args.v, b, kv_head, vt.data());
  std::vector<double> dk(kv_len * head_dim, 0.0);    // (kv_len, head_dim)
  std::vector<double> dv(kv_len * v_head_dim, 0.0);  // (kv_len, v_head_dim)

  std::vector<double> q(q_len * head_dim);       // (q_len, head_dim)
  std::vector<double> dout(q_len * v_head_dim);  // (q_len, v_head_dim)
  std::vector<double> dq(q_len * head_dim);      // (q_len, head_dim)
  std::vector<double> dlse(q_len, 0.0);
  std::vector<double> s(kv_len), dmod(kv_len), p(kv_len), dp(kv_len);  // one row each
  std::vector<KvSpan> spans;

  for (int64_t r = 0; r < shape.group_size; ++r) {
    const int64_t h = kv_head * shape.group_size + r;
    gather_matrix(args.q, b, h, q.data());
    gather_matrix(args.dout, b, h, dout.data());
    if (args.dlse.defined()) gather_row_stat(args.dlse, b, h, dlse.data());
    const HeadScoreMod mod = resolve_head_score_mod(args.score_mod, b, h);
    double* dbias_h = nullptr;  // (q_len, kv_len)
    if (dbias_partial != nullptr) {
      const int64_t slice = dbias_heads_per_group(args, shape) == 1 ? 0 : r;
      dbias_h = dbias_partial->data() + slice * q_len * kv_len;
    }
    std::fill(dq.begin(), dq.end(), 0.0);  // a fully masked row keeps dq = 0

    for (int64_t i = 0; i < q_len; ++i) {
      if (i % kTileSize == 0) visible_kv_spans(args.block_mask, b, h, i / kTileSize, kv_len, spans);
      const double* q_i = &q[i * head_dim];
      const double* dout_i = &dout[i * v_head_dim];
      double* dq_i = &dq[i * head_dim];
      score_row(q_i, kt.data(), kv_len, head_dim, scale, mod, i, spans, s.data(), dmod.data());
      const RowStats stats = exp_row(s.data(), spans, p.data());
      if (stats.empty()) continue;

      double delta = 0.0;  // D_i
      for (const KvSpan& span : spans) {
        for (int64_t j = span.begin; j < span.end; ++j) p[j] /= stats.sum;
        std::fill(dp.begin() + span.begin, dp.begin() + span.end, 0.0);
        for (int64_t c = 0; c < v_head_dim; ++c) {
          const double dout_ic = dout_i[c];
          const double* vt_c = &vt[c * kv_len];
          for (int64_t j = span.begin; j < span.end; ++j) dp[j] += dout_ic * vt_c[j];
        }
        for (int64_t j = span.begin; j < span.end; ++j) {
          if (s[j] != kMaskedScore) delta += p[j] * dp[j];
        }
      }

      for (const KvSpan& span : spans) {
        for (int64_t j = span.begin; j < span.end; ++j) {
          if (s[j] == kMaskedScore) continue;
          const double ds = p[j] * (dp[j] - delta + dlse[i]);  // gradient of the modded score
          if (dbias_h != nullptr) dbias_h[i * kv_len + j] += ds;
          const double ds_raw = ds * dmod[j];
          const double ds_raw_scaled = scale * ds_raw;
          const double* k_j = &k[j * head_dim];
          double* dk_j = &dk[j * head_dim];
          for (int64_t c = 0; c < head_dim; ++c) dq_i[c] += ds_raw * k_j[c];
          for (int64_t c = 0; c < head_dim; ++c) dk_j[c] += ds_raw_scaled * q_i[c];
          const double p_j = p[j];
          double* dv_j = &dv[j * v_head_dim];
          for (int64_t c = 0; c < v_head_dim; ++c) dv_j[c] += p_j * dout_i[c];
        }
      }
      for (int64_t c = 0; c < head_dim; ++c) dq_i[c] *= scale;
    }
    scatter_matrix(dq.data(), args.dq, b, h);
  }
  scatter_matrix(dk.data(), args.dk, b, kv_head);
  scatter_matrix(dv.data(), args.dv, b, kv_head);
}

// dbias[bb, hh] = sum, in group order, of the partial slices of the groups that map onto it.
void reduce_dbias(const BackwardArgs& args, const BackwardShape& shape,
                  const std::vector<std::vector<double>>& partials) {
  const TensorRef& dbias = args.dbias;
  const int64_t bias_batch = dbias.sizes[0], bias_heads = dbias.sizes[1];
  const int64_t slice_size = shape.q_len * shape.kv_len;
  std::vector<double> slice(slice_size);  // (q_len, kv_len)
  for (int64_t bb = 0; bb < bias_batch; ++bb) {
    for (int64_t hh = 0; hh < bias_heads; ++hh) {
      std::fill(slice.begin(), slice.end(), 0.0);
      for (int64_t task = 0; task < shape.batch * shape.kv_heads; ++task) {
        const int64_t b = task / shape.kv_heads, kv_head = task % shape.kv_heads;
        if (bias_batch != 1 && b != bb) continue;
        int64_t partial_slice = 0;
        if (bias_heads != 1) {
          if (hh / shape.group_size != kv_head) continue;
          partial_slice = hh % shape.group_size;
        }
        const double* src = partials[task].data() + partial_slice * slice_size;
        for (int64_t e = 0; e < slice_size; ++e) slice[e] += src[e];
      }
      scatter_matrix(slice.data(), dbias, bb, hh);
    }
  }
}

}  // namespace

void reference_backward(const BackwardArgs& args, double scale) {
  const BackwardShape shape = shape_of(args);
  const int64_t num_tasks = shape.batch * shape.kv_heads;
  const bool want_dbias = args.dbias.defined() && args.score_mod.kind == ScoreModKind::kBias;
  std::vector<std::vector<double>> dbias_partials(want_dbias ? num_tasks : 0);
  parallel_for(num_tasks, [&](int64_t task) {
    std::vector<double>* partial = nullptr;
    if (want_dbias) {
      partial = &dbias_partials[task];
      partial->assign(dbias_heads_per_group(args, shape) * shape.q_len * shape.kv_len, 0.0);
    }
    backward_group(args, scale, shape, task / shape.kv_heads, task % shape.kv_heads, partial);
  });
  if (want_dbias) reduce_dbias(args, shape, dbias_partials);
}

}  // namespace flashflex::cpu
