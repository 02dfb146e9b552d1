// CPU reference of EAGLE3 TTT attention, forward and backward, in float64. Step k = number of
// blocks - 1; row i of sample b is valid iff i < L_b - k. A valid row's scores are
//   s_c = scale * q_i . K_0[c]     for c <= i         (causal over block 0)
//   s_j = scale * q_i . K_j[i]     for 1 <= j <= k    (row-local: one key per later block)
// in one softmax P (max m, sum l, lse = m + ln l), out_i = sum_c P_c V_0[c] + sum_j P_j V_j[i].
// Backward (P recomputed from q and the blocks; out and lse are not read):
//   dP = dO_i . V,  D_i = sum P dP,  dS = P (dP - D_i + dlse_i),
//   dq_i = scale (sum_c dS_c K_0[c] + sum_j dS_j K_j[i]),
//   dK_0[c] += scale dS_c q_i,  dV_0[c] += P_c dO_i     (every valid row i >= c)
//   dK_j[i] += scale dS_j q_i,  dV_j[i] += P_j dO_i     (row i only)
// summed over the query heads of a GQA group. Invalid rows: out 0, lse -inf, no gradient.
// One task per (batch, kv head) group on parallel_for.hpp walks the rows in order and, per row,
// every query head of the group: block 0 is gathered once per group, the row-local keys once per
// row, and every sum runs in a fixed order (deterministic, no atomics). Scores of the causal part
// come from row_scores.hpp; I/O from strided_io.hpp. Called by src/api/eagle3.cpp.
#include "cpu/reference_eagle3.hpp"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/parallel_for.hpp"
#include "cpu/row_scores.hpp"
#include "cpu/strided_io.hpp"

namespace flashflex::cpu {
namespace {

struct Eagle3Dims {
  int64_t batch, q_heads, kv_heads, group_size, seq_len, head_dim, step;
};

Eagle3Dims dims_of(const TensorRef& q, const std::vector<TensorRef>& k_blocks) {
  Eagle3Dims d;
  d.batch = q.sizes[0];
  d.q_heads = q.sizes[1];
  d.kv_heads = k_blocks[0].sizes[1];
  d.group_size = d.q_heads / d.kv_heads;
  d.seq_len = q.sizes[2];
  d.head_dim = q.sizes[3];
  d.step = static_cast<int64_t>(k_blocks.size()) - 1;
  return d;
}

// Rows [0, result) of sample b are valid: i < L_b - step, L_b = seq_lengths[b] or seq_len.
int64_t valid_rows(const TensorRef& seq_lengths, int64_t b, const Eagle3Dims& d) {
  int64_t length = d.seq_len;
  if (seq_lengths.defined()) {
    const int64_t offset = b * seq_lengths.strides[0];
    length = seq_lengths.dtype == DType::kInt32 ? static_cast<const int32_t*>(seq_lengths.data)[offset]
                                                : static_cast<const int64_t*>(seq_lengths.data)[offset];
  }
  return std::clamp<int64_t>(length - d.step, 0, d.seq_len);
}

// Scratch of one row: scores and probabilities over the causal columns [0, seq_len) followed by
// the step row-local columns [seq_len, seq_len + step) (column seq_len + j - 1 is block j).
struct RowScratch {
  std::vector<double> s, p, dp;
  std::vector<KvSpan> causal;  // {[0, i + 1)}
  std::vector<KvSpan> all;     // causal, then the row-local columns

  explicit RowScratch(const Eagle3Dims& d)
      : s(d.seq_len + d.step), p(d.seq_len + d.step), dp(d.seq_len + d.step), causal(1), all(2) {}

  void set_row(int64_t i, const Eagle3Dims& d) {
    causal[0] = {0, i + 1, nullptr};
    all[0] = causal[0];
    all[1] = {d.seq_len, d.seq_len + d.step, nullptr};
  }
};

// Scores of valid row i (after scratch.set_row) and exp(s - max) into scratch.p.
// k0t: K_0 transposed (head_dim, seq_len); diag_k: K_1[i] .. K_step[i] (step, head_dim).
RowStats score_row_eagle3(const double* q_i, const double* k0t, const double* diag_k, const Eagle3Dims& d,
                          double scale, int64_t i, RowScratch& scratch) {
  score_row(q_i, k0t, d.seq_len, d.head_dim, scale, HeadScoreMod{}, i, scratch.causal, scratch.s.data(), nullptr);
  for (int64_t j = 0; j < d.step; ++j) {
    const double* k_j = &diag_k[j * d.head_dim];
    double dot = 0.0;
    for (int64_t c = 0; c < d.head_dim; ++c) dot += q_i[c] * k_j[c];
    scratch.s[d.seq_len + j] = scale * dot;
  }
  return exp_row(scratch.s.data(), scratch.all, scratch.p.data());
}

// Row i of blocks 1..step at (b, kv_head) into dst (step, head_dim).
void gather_diagonal(const std::vector<TensorRef>& blocks, int64_t b, int64_t kv_head, int64_t i, int64_t head_dim,
                     double* dst) {
  for (size_t j = 1; j < blocks.size(); ++j) gather_row(blocks[j], b, kv_head, i, &dst[(j - 1) * head_dim]);
}

void scatter_diagonal(const double* src, const std::vector<TensorRef>& blocks, int64_t b, int64_t kv_head, int64_t i,
                      int64_t head_dim) {
  for (size_t j = 1; j < blocks.size(); ++j) scatter_row(&src[(j - 1) * head_dim], blocks[j], b, kv_head, i);
}

// ---- forward -------------------------------------------------------------------------------

void forward_group(const Eagle3ForwardArgs& args, const Eagle3Dims& d, double scale, int64_t b, int64_t kv_head) {
  const int64_t seq_len = d.seq_len, head_dim = d.head_dim;
  std::vector<double> k0t(head_dim * seq_len), v0(seq_len * head_dim);  // (head_dim, seq_len), (seq_len, head_dim)
  gather_matrix_transposed(args.k_blocks[0], b, kv_head, k0t.data());
  gather_matrix(args.v_blocks[0], b, kv_head, v0.data());
  std::vector<double> diag_k(d.step * head_dim);  // (step, head_dim): row i of blocks 1..step
  std::vector<double> diag_v(d.step * head_dim);
  std::vector<double> q_i(head_dim), out_i(head_dim);
  RowScratch scratch(d);
  const int64_t valid = valid_rows(args.seq_lengths, b, d);

  for (int64_t i = 0; i < seq_len; ++i) {
    const bool row_valid = i < valid;
    if (row_valid) {
      gather_diagonal(args.k_blocks, b, kv_head, i, head_dim, diag_k.data());
      gather_diagonal(args.v_blocks, b, kv_head, i, head_dim, diag_v.data());
      scratch.set_row(i, d);
    }
    for (int64_t r = 0; r < d.group_size; ++r) {
      const int64_t h = kv_head * d.group_size + r;
      std::fill(out_i.begin(), out_i.end(), 0.0);
      RowStats stats;  // empty: out 0, lse -inf
      if (row_valid) {
        gather_row(args.q, b, h, i, q_i.data());
        stats = score_row_eagle3(q_i.data(), k0t.data(), diag_k.data(), d, scale, i, scratch);
      }
      if (!stats.empty()) {
        const double* p = scratch.p.data();
        for (int64_t c = 0; c <= i; ++c) {
          const double* v_c = &v0[c * head_dim];
          for (int64_t e = 0; e < head_dim; ++e) out_i[e] += p[c] * v_c[e];
        }
        for (int64_t j = 0; j < d.step; ++j) {
          const double* v_j = &diag_v[j * head_dim];
          for (int64_t e = 0; e < head_dim; ++e) out_i[e] += p[seq_len + j] * v_j[e];
        }
        for (int64_t e = 0; e < head_dim; ++e) out_i[e] /= stats.sum;
      }
      scatter_row(out_i.data(), args.out, b, h, i);
      if (args.lse.defined()) set_row_stat(args.lse, b, h, i, stats.lse());
    }
  }
}

// ---- backward ------------------------------------------------------------------------------

void backward_group(const Eagle3BackwardArgs& args, const Eagle3Dims& d, double scale, int64_t b, int64_t kv_head) {
  const int64_t seq_len = d.seq_len, head_dim = d.head_dim;
  std::vector<double> k0(seq_len * head_dim);   // (seq_len, head_dim)
  std::vector<double> k0t(head_dim * seq_len);  // (head_dim, seq_len)
  std::vector<double> v0t(head_dim * seq_len);  // (head_dim, seq_len)
  gather_matrix(args.k_blocks[0], b, kv_head, k0.data());
  gather_matrix_transposed(args.k_blocks[0], b, kv_head, k0t.data());
  gather_matrix_transposed(args.v_blocks[0], b, kv_head, v0t.data());
  std::vector<double> dk0(seq_len * head_dim, 0.0);  // (seq_len, head_dim), summed over rows and heads
  std::vector<double> dv0(seq_len * head_dim, 0.0);
  std::vector<double> diag_k(d.step * head_dim), diag_v(d.step * head_dim);    // (step, head_dim): row i of
  std::vector<double> diag_dk(d.step * head_dim), diag_dv(d.step * head_dim);  // blocks 1..step, gradients
  std::vector<double> q_i(head_dim), dout_i(head_dim), dq_i(head_dim);
  RowScratch scratch(d);
  const int64_t valid = valid_rows(args.seq_lengths, b, d);

  for (int64_t i = 0; i < seq_len; ++i) {
    const bool row_valid = i < valid;
    std::fill(diag_dk.begin(), diag_dk.end(), 0.0);
    std::fill(diag_dv.begin(), diag_dv.end(), 0.0);
    if (row_valid) {
      gather_diagonal(args.k_blocks, b, kv_head, i, head_dim, diag_k.data());
      gather_diagonal(args.v_blocks, b, kv_head, i, head_dim, diag_v.data());
      scratch.set_row(i, d);
    }
    for (int64_t r = 0; r < d.group_size; ++r) {
      const int64_t h = kv_head * d.group_size + r;
      std::fill(dq_i.begin(), dq_i.end(), 0.0);
      RowStats stats;
      if (row_valid) {
        gather_row(args.q, b, h, i, q_i.data());
        stats = score_row_eagle3(q_i.data(), k0t.data(), diag_k.data(), d, scale, i, scratch);
      }
      if (!stats.empty()) {
        gather_row(args.dout, b, h, i, dout_i.data());
        const double dlse_i = args.dlse.defined() ? row_stat_at(args.dlse, b, h, i) : 0.0;
        double* p = scratch.p.data();
        double* dp = scratch.dp.data();
        // dP over the causal columns (V_0 transposed: contiguous in c), then the row-local ones.
        std::fill(dp, dp + i + 1, 0.0);
        for (int64_t e = 0; e < head_dim; ++e) {
          const double dout_e = dout_i[e];
          const double* vt_e = &v0t[e * seq_len];
          for (int64_t c = 0; c <= i; ++c) dp[c] += dout_e * vt_e[c];
        }
        for (int64_t j = 0; j < d.step; ++j) {
          const double* v_j = &diag_v[j * head_dim];
          double dot = 0.0;
          for (int64_t e = 0; e < head_dim; ++e) dot += dout_i[e] * v_j[e];
          dp[seq_len + j] = dot;
        }
        double delta = 0.0;  // D_i
        for (int64_t c = 0; c <= i; ++c) {
          p[c] /= stats.sum;
          delta += p[c] * dp[c];
        }
        for (int64_t j = 0; j < d.step; ++j) {
          p[seq_len + j] /= stats.sum;
          delta += p[seq_len + j] * dp[seq_len + j];
        }
        auto accumulate = [&](int64_t column, const double* k_row, double* dk_row, double* dv_row) {
          const double ds = p[column] * (dp[column] - delta + dlse_i);
          const double ds_scaled = scale * ds;
          for (int64_t e = 0; e < head_dim; ++e) dq_i[e] += ds * k_row[e];
          for (int64_t e = 0; e < head_dim; ++e) dk_row[e] += ds_scaled * q_i[e];
          for (int64_t e = 0; e < head_dim; ++e) dv_row[e] += p[column] * dout_i[e];
        };
        for (int64_t c = 0; c <= i; ++c) accumulate(c, &k0[c * head_dim], &dk0[c * head_dim], &dv0[c * head_dim]);
        for (int64_t j = 0; j < d.step; ++j) {
          accumulate(seq_len + j, &diag_k[j * head_dim], &diag_dk[j * head_dim], &diag_dv[j * head_dim]);
        }
        for (int64_t e = 0; e < head_dim; ++e) dq_i[e] *= scale;
      }
      scatter_row(dq_i.data(), args.dq, b, h, i);
    }
    scatter_diagonal(diag_dk.data(), args.dk_blocks, b, kv_head, i, head_dim);
    scatter_diagonal(diag_dv.data(), args.dv_blocks, b, kv_head, i, head_dim);
  }
  scatter_matrix(dk0.data(), args.dk_blocks[0], b, kv_head);
  scatter_matrix(dv0.data(), args.dv_blocks[0], b, kv_head);
}

}  // namespace

void reference_eagle3_forward(const Eagle3ForwardArgs& args, double scale) {
  const Eagle3Dims d = dims_of(args.q, args.k_blocks);
  parallel_for(d.batch * d.kv_heads,
               [&](int64_t task) { forward_group(args, d, scale, task / d.kv_heads, task % d.kv_heads); });
}

void reference_eagle3_backward(const Eagle3BackwardArgs& args, double scale) {
  const Eagle3Dims d = dims_of(args.q, args.k_blocks);
  parallel_for(d.batch * d.kv_heads,
               [&](int64_t task) { backward_group(args, d, scale, task / d.kv_heads, task % d.kv_heads); });
}

}  // namespace flashflex::cpu
