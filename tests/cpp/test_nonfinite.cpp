// Non-finite inputs and scale = 0 on the CPU path (flashflex::forward / backward / eagle3_forward):
// a NaN or infinite value reaches, as NaN, the rows that see it (out and lse), as the dense
// computation gives; rows that see nothing still give out 0, lse -inf and zero gradients; scale 0
// is uniform attention over the visible keys. One test per case.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "flashflex/attention.hpp"
#include "flashflex/eagle3.hpp"
#include "flashflex/mask.hpp"

namespace ff = flashflex;

namespace {

constexpr int64_t kD = 64;
constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// B = 1, H heads, L x L, D = 64, float32, deterministic non-zero values of both signs.
struct Problem {
  int64_t heads, len;
  std::vector<float> q, k, v, out, lse, dout, dq, dk, dv;

  Problem(int64_t h, int64_t l) : heads(h), len(l) {
    const size_t n = static_cast<size_t>(h * l * kD);
    for (auto* t : {&q, &k, &v, &dout}) t->resize(n);
    for (size_t i = 0; i < n; ++i) {
      q[i] = static_cast<float>(std::sin(0.37 * i));
      k[i] = static_cast<float>(std::cos(0.53 * i));
      v[i] = static_cast<float>(std::sin(0.71 * i + 1.0));
      dout[i] = static_cast<float>(std::cos(0.29 * i + 2.0));
    }
    out.assign(n, 0.f);
    dq.assign(n, 0.f);
    dk.assign(n, 0.f);
    dv.assign(n, 0.f);
    lse.assign(static_cast<size_t>(h * l), 0.f);
  }
  ff::TensorRef t4(std::vector<float>& d) {
    return ff::make_tensor(d.data(), ff::DType::kFloat32, {1, heads, len, kD});
  }
  float& at(std::vector<float>& d, int64_t h, int64_t row, int64_t c) { return d[(h * len + row) * kD + c]; }
  ff::ForwardArgs fwd() {
    ff::ForwardArgs a;
    a.q = t4(q);
    a.k = t4(k);
    a.v = t4(v);
    a.out = t4(out);
    a.lse = ff::make_tensor(lse.data(), ff::DType::kFloat32, {1, heads, len});
    return a;
  }
  ff::BackwardArgs bwd() {
    ff::BackwardArgs a;
    a.q = t4(q);
    a.k = t4(k);
    a.v = t4(v);
    a.out = t4(out);
    a.dout = t4(dout);
    a.lse = ff::make_tensor(lse.data(), ff::DType::kFloat32, {1, heads, len});
    a.dq = t4(dq);
    a.dk = t4(dk);
    a.dv = t4(dv);
    return a;
  }
  bool row_all_nan(std::vector<float>& d, int64_t h, int64_t row) {
    for (int64_t c = 0; c < kD; ++c) {
      if (!std::isnan(at(d, h, row, c))) return false;
    }
    return true;
  }
  bool row_finite(std::vector<float>& d, int64_t h, int64_t row) {
    for (int64_t c = 0; c < kD; ++c) {
      if (!std::isfinite(at(d, h, row, c))) return false;
    }
    return true;
  }
};

TEST(NonFinite, NanInQueryGivesNanRow) {
  Problem p(1, 9);
  p.at(p.q, 0, 4, 3) = static_cast<float>(kNan);
  ff::forward(p.fwd());
  for (int64_t i = 0; i < p.len; ++i) {
    SCOPED_TRACE(i);
    if (i == 4) {
      EXPECT_TRUE(p.row_all_nan(p.out, 0, i));
      EXPECT_TRUE(std::isnan(p.lse[i]));
    } else {
      EXPECT_TRUE(p.row_finite(p.out, 0, i));
      EXPECT_TRUE(std::isfinite(p.lse[i]));
    }
  }
}

// -inf times keys of both signs: +inf and -inf scores summed over D, NaN as in a dense product.
TEST(NonFinite, MinusInfRowOfQueryGivesNanRow) {
  Problem p(1, 9);
  for (int64_t c = 0; c < kD; ++c) p.at(p.q, 0, 2, c) = static_cast<float>(-kInf);
  ff::forward(p.fwd());
  EXPECT_TRUE(p.row_all_nan(p.out, 0, 2));
  EXPECT_TRUE(std::isnan(p.lse[2]));
  EXPECT_TRUE(p.row_finite(p.out, 0, 1));
}

// Causal: key 3 is seen by rows 3.. only; its NaN reaches column 0 of those rows.
TEST(NonFinite, NanInValueReachesTheRowsThatSeeIt) {
  Problem p(1, 9);
  p.at(p.v, 0, 3, 0) = static_cast<float>(kNan);
  const ff::HostBlockMask mask = ff::build_block_mask(ff::Mask::causal(), 1, 1, p.len, p.len);
  const ff::BlockMask view = mask.view();
  auto a = p.fwd();
  a.block_mask = &view;
  ff::forward(a);
  for (int64_t i = 0; i < p.len; ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(std::isnan(p.at(p.out, 0, i, 0)), i >= 3);
    EXPECT_TRUE(std::isfinite(p.at(p.out, 0, i, 1)));
    EXPECT_TRUE(std::isfinite(p.lse[i]));
  }
}

TEST(NonFinite, NanAlibiSlopeGivesNanHead) {
  Problem p(2, 9);
  std::vector<float> slopes = {0.5f, static_cast<float>(kNan)};
  auto a = p.fwd();
  a.score_mod = ff::ScoreMod::alibi(ff::make_tensor(slopes.data(), ff::DType::kFloat32, {2}));
  ff::forward(a);
  for (int64_t i = 0; i < p.len; ++i) {
    SCOPED_TRACE(i);
    EXPECT_TRUE(p.row_finite(p.out, 0, i));
    EXPECT_TRUE(p.row_all_nan(p.out, 1, i));
    EXPECT_TRUE(std::isnan(p.lse[p.len + i]));
  }
}

TEST(NonFinite, NanQueryRowGivesNanGradients) {
  Problem p(1, 9);
  p.at(p.q, 0, 4, 0) = static_cast<float>(kNan);
  ff::forward(p.fwd());
  ff::backward(p.bwd());
  EXPECT_TRUE(p.row_all_nan(p.dq, 0, 4));
  EXPECT_TRUE(p.row_finite(p.dq, 0, 3));
  EXPECT_TRUE(p.row_all_nan(p.dk, 0, 0));  // row 4 saw every key
  EXPECT_TRUE(p.row_all_nan(p.dv, 0, 0));
}

// Rows 0 and 1 see nothing (causal offset -2) and hold NaN: they still give out 0, lse -inf,
// dq 0, and add nothing to dk / dv.
TEST(NonFinite, FullyMaskedRowsIgnoreTheirNan) {
  Problem p(1, 9);
  for (int64_t c = 0; c < kD; ++c) p.at(p.q, 0, 0, c) = p.at(p.q, 0, 1, c) = static_cast<float>(kNan);
  const ff::HostBlockMask mask = ff::build_block_mask(ff::Mask::causal(-2), 1, 1, p.len, p.len);
  const ff::BlockMask view = mask.view();
  auto f = p.fwd();
  f.block_mask = &view;
  ff::forward(f);
  auto b = p.bwd();
  b.block_mask = &view;
  ff::backward(b);
  for (int64_t i = 0; i < 2; ++i) {
    EXPECT_TRUE(std::isinf(p.lse[i]) && p.lse[i] < 0);
    for (int64_t c = 0; c < kD; ++c) {
      EXPECT_EQ(p.at(p.out, 0, i, c), 0.f);
      EXPECT_EQ(p.at(p.dq, 0, i, c), 0.f);
    }
  }
  for (int64_t j = 0; j < p.len; ++j) {
    EXPECT_TRUE(p.row_finite(p.dk, 0, j));
    EXPECT_TRUE(p.row_finite(p.dv, 0, j));
  }
}

// scale = 0: every visible score is 0, so row i of a causal mask averages v[0..i], lse = ln(i + 1),
// and only dv is non-zero (dq and dk carry the factor scale).
TEST(NonFinite, ScaleZeroIsUniformAttention) {
  Problem p(1, 9);
  const ff::HostBlockMask mask = ff::build_block_mask(ff::Mask::causal(), 1, 1, p.len, p.len);
  const ff::BlockMask view = mask.view();
  auto f = p.fwd();
  f.block_mask = &view;
  f.scale = 0.0;
  ff::forward(f);
  auto b = p.bwd();
  b.block_mask = &view;
  b.scale = 0.0;
  ff::backward(b);
  for (int64_t i = 0; i < p.len; ++i) {
    SCOPED_TRACE(i);
    EXPECT_NEAR(p.lse[i], std::log(static_cast<double>(i + 1)), 1e-6);
    for (int64_t c = 0; c < kD; ++c) {
      double mean = 0.0;
      for (int64_t j = 0; j <= i; ++j) mean += p.at(p.v, 0, j, c);
      EXPECT_NEAR(p.at(p.out, 0, i, c), mean / static_cast<double>(i + 1), 1e-6);
      EXPECT_EQ(p.at(p.dq, 0, i, c), 0.f);
      EXPECT_EQ(p.at(p.dk, 0, i, c), 0.f);
      double dv = 0.0;  // sum over rows r >= i of dout[r] / (r + 1)
      for (int64_t r = i; r < p.len; ++r) dv += p.at(p.dout, 0, r, c) / static_cast<double>(r + 1);
      EXPECT_NEAR(p.at(p.dv, 0, i, c), dv, 1e-5);
    }
  }
}

// ---- EAGLE3 --------------------------------------------------------------------------------

struct Eagle3Problem : Problem {
  std::vector<float> k1, v1;
  Eagle3Problem() : Problem(1, 9), k1(k), v1(v) {
    for (auto& x : k1) x = -x;
  }
  ff::Eagle3ForwardArgs fwd3() {
    ff::Eagle3ForwardArgs a;
    a.q = t4(q);
    a.k_blocks = {t4(k), t4(k1)};
    a.v_blocks = {t4(v), t4(v1)};
    a.out = t4(out);
    a.lse = ff::make_tensor(lse.data(), ff::DType::kFloat32, {1, 1, len});
    return a;
  }
};

TEST(NonFinite, Eagle3NanInQueryGivesNanRow) {
  Eagle3Problem p;
  p.at(p.q, 0, 3, 7) = static_cast<float>(kNan);
  p.at(p.q, 0, 8, 7) = static_cast<float>(kNan);  // row 8 = T - 1 is invalid at step 1: stays out 0
  ff::eagle3_forward(p.fwd3());
  EXPECT_TRUE(p.row_all_nan(p.out, 0, 3));
  EXPECT_TRUE(std::isnan(p.lse[3]));
  EXPECT_TRUE(p.row_finite(p.out, 0, 2));
  EXPECT_TRUE(std::isinf(p.lse[8]) && p.lse[8] < 0);
  for (int64_t c = 0; c < kD; ++c) EXPECT_EQ(p.at(p.out, 0, 8, c), 0.f);
}

// Row i (valid: i < T - 1) sees K_0[0..i] and K_1[i]: scale 0 averages those i + 2 values.
TEST(NonFinite, Eagle3ScaleZeroIsUniformAttention) {
  Eagle3Problem p;
  auto a = p.fwd3();
  a.scale = 0.0;
  ff::eagle3_forward(a);
  for (int64_t i = 0; i + 1 < p.len; ++i) {
    SCOPED_TRACE(i);
    EXPECT_NEAR(p.lse[i], std::log(static_cast<double>(i + 2)), 1e-6);
    for (int64_t c = 0; c < kD; ++c) {
      double sum = p.at(p.v1, 0, i, c);
      for (int64_t j = 0; j <= i; ++j) sum += p.at(p.v, 0, j, c);
      EXPECT_NEAR(p.at(p.out, 0, i, c), sum / static_cast<double>(i + 2), 1e-6);
    }
  }
}

}  // namespace
