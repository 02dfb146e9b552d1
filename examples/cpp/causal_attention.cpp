// Causal grouped-query attention on the CPU through the flashflex C++ API: build a block mask,
// run the forward and the backward, print a checksum and the mask's tile counts.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "flashflex/attention.hpp"
#include "flashflex/mask.hpp"

int main() {
  namespace ff = flashflex;
  const int64_t batch = 1, q_heads = 8, kv_heads = 2, seq_len = 300, head_dim = 64;

  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  auto random_tensor = [&](int64_t heads) {
    std::vector<float> t(batch * heads * seq_len * head_dim);
    for (float& x : t) x = normal(rng);
    return t;
  };
  std::vector<float> q = random_tensor(q_heads), k = random_tensor(kv_heads), v = random_tensor(kv_heads);
  std::vector<float> out(q.size()), lse(batch * q_heads * seq_len);
  auto bhtd = [&](std::vector<float>& data, int64_t heads) {
    return ff::make_tensor(data.data(), ff::DType::kFloat32, {batch, heads, seq_len, head_dim});
  };

  const ff::HostBlockMask mask = ff::build_block_mask(ff::Mask::causal(), batch, q_heads, seq_len, seq_len);
  const ff::BlockMask mask_view = mask.view();

  ff::ForwardArgs fwd;
  fwd.q = bhtd(q, q_heads);
  fwd.k = bhtd(k, kv_heads);
  fwd.v = bhtd(v, kv_heads);
  fwd.out = bhtd(out, q_heads);
  fwd.lse = ff::make_tensor(lse.data(), ff::DType::kFloat32, {batch, q_heads, seq_len});
  fwd.block_mask = &mask_view;
  try {
    ff::forward(fwd);

    std::vector<float> dout = random_tensor(q_heads), dq(q.size()), dk(k.size()), dv(v.size());
    ff::BackwardArgs bwd;
    bwd.q = fwd.q;
    bwd.k = fwd.k;
    bwd.v = fwd.v;
    bwd.out = fwd.out;
    bwd.lse = fwd.lse;
    bwd.dout = bhtd(dout, q_heads);
    bwd.dq = bhtd(dq, q_heads);
    bwd.dk = bhtd(dk, kv_heads);
    bwd.dv = bhtd(dv, kv_heads);
    bwd.block_mask = &mask_view;
    ff::backward(bwd);

    double sum_out = 0, sum_dk = 0;
    for (float x : out) sum_out += x;
    for (float x : dk) sum_dk += x;
    std::printf("mask: %lld x %lld tiles, %lld partial\n", static_cast<long long>(mask.num_q_tiles),
                static_cast<long long>(mask.num_kv_tiles), static_cast<long long>(mask.num_partial_tiles()));
    std::printf("sum(out) = %.6f  sum(dk) = %.6f  lse[0] = %.6f\n", sum_out, sum_dk, lse[0]);
  } catch (const ff::Error& e) {
    std::fprintf(stderr, "flashflex error: %s\n", e.what());
    return 1;
  }
  return 0;
}
