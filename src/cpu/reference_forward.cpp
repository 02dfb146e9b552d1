// CPU reference forward: out = softmax(mask(mod(scale * q k^T))) v and lse = log-sum-exp of the
// visible scores, accumulated in float64. One task per (batch, kv head) group runs on
// parallel_for.hpp; rows are scored by row_scores.hpp on buffers gathered by strided_io.hpp.
// Called by flashflex::forward (src/api/attention.cpp) after validation.
#include "cpu/reference.hpp"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/parallel_for.hpp"
#include "cpu/row_scores.hpp"
#include "cpu/strided_io.hpp"

namespace flashflex::cpu {
namespace {

// Every query head of kv head `kv_head` in sample b: K and V are gathered once for the group.
void forward_group(const ForwardArgs& args, double scale, int64_t b, int64_t kv_head) {
  const int64_t group_size = args.q.sizes[1] / args.k.sizes[1];
  const int64_t q_len = args.q.sizes[2], kv_len = args.k.sizes[2];
  const int64_t head_dim = args.q.sizes[3], v_head_dim = args.v.sizes[3];

  std::vector<double> kt(head_dim * kv_len);   // (head_dim, kv_len)
  std::vector<double> v(kv_len * v_head_dim);  // (kv_len, v_head_dim)
  gather_matrix_transposed(args.k, b, kv_head, kt.data());
  gather_matrix(args.v, b, kv_head, v.data());

  std::vector<double> q(q_len * head_dim);      // (q_len, head_dim)
  std::vector<double> out(q_len * v_head_dim);  // (q_len, v_head_dim)
  std::vector<double> lse(q_len);
  std::vector<double> s(kv_len), p(kv_len);     // one row of scores and of exp(s - max)
  std::vector<KvSpan> spans;

  for (int64_t r = 0; r < group_size; ++r) {
    const int64_t h = kv_head * group_size + r;
    gather_matrix(args.q, b, h, q.data());
    const HeadScoreMod mod = resolve_head_score_mod(args.score_mod, b, h);
    std::fill(out.begin(), out.end(), 0.0);  // a fully masked row keeps out = 0
    for (int64_t i = 0; i < q_len; ++i) {
      if (i % kTileSize == 0) visible_kv_spans(args.block_mask, b, h, i / kTileSize, kv_len, spans);
      score_row(&q[i * head_dim], kt.data(), kv_len, head_dim, scale, mod, i, spans, s.data(), nullptr);
      const RowStats stats = exp_row(s.data(), spans, p.data());
      lse[i] = stats.lse();
      if (stats.empty()) continue;
      double* out_i = &out[i * v_head_dim];
      for (const KvSpan& span : spans) {
        for (int64_t j = span.begin; j < span.end; ++j) {
          if (s[j] == kMaskedScore) continue;
          const double p_j = p[j];
          const double* v_j = &v[j * v_head_dim];
          for (int64_t c = 0; c < v_head_dim; ++c) out_i[c] += p_j * v_j[c];
        }
      }
      for (int64_t c = 0; c < v_head_dim; ++c) out_i[c] /= stats.sum;
    }
    scatter_matrix(out.data(), args.out, b, h);
    if (args.lse.defined()) scatter_row_stat(lse.data(), args.lse, b, h);
  }
}

}  // namespace

void reference_forward(const ForwardArgs& args, double scale) {
  const int64_t batch = args.q.sizes[0], kv_heads = args.k.sizes[1];
  parallel_for(batch * kv_heads, [&](int64_t task) { forward_group(args, scale, task / kv_heads, task % kv_heads); });
}

}  // namespace flashflex::cpu
