// Numerics of the EAGLE3 TTT path (flashflex::eagle3_forward / eagle3_backward, CPU reference):
// against the dense float64 oracle of reference_test_dense.hpp run on the concatenated keys
// [K_0 | K_1 | ... | K_k] with the customers' generate_eagle3_mask written over the concatenated
// columns (the test concatenates; the library never does), exact zeros on invalid rows, central
// finite differences, determinism, and the unroll-size timing. Argument errors are in
// test_eagle3_validation.cpp.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "flashflex/eagle3.hpp"
#include "reference_test_dense.hpp"
#include "reference_test_utils.hpp"

namespace {

namespace ff = flashflex;
using namespace flashflex::reference_test;
using ff::DType;

constexpr uint32_t kSeed = 20240917;
// Inputs normal(0, 1.5), as test_reference.cpp: scores up to ~10 at D = 64, softmax rows
// neither uniform nor one-hot.
constexpr double kInputStddev = 1.5;

struct Eagle3Case {
  const char* name;
  int64_t batch, q_heads, kv_heads, seq_len, head_dim, step;
  DType dtype = DType::kFloat32;
  Layout layout = Layout::kHeadsOuter;
  std::vector<int64_t> lengths = {};  // empty: no seq_lengths tensor (L_b = seq_len)
  DType lengths_dtype = DType::kInt64;
  bool with_lse = true;
  bool with_dlse = true;
  std::optional<double> scale = std::nullopt;
  bool mixed_layouts = false;  // odd blocks in the other layout than q and the even blocks
};

void PrintTo(const Eagle3Case& c, std::ostream* os) { *os << c.name; }

// One problem: the library's tensors (a list of blocks) and the dense problem over their
// concatenation, with the mask as the customers write it.
struct Eagle3Problem {
  Eagle3Case c;
  TestTensor q, out, lse, dout, dlse, dq;
  std::vector<TestTensor> k, v, dk, dv;
  std::vector<int32_t> lengths32;
  std::vector<int64_t> lengths64;
  DenseProblem dense;

  int64_t num_blocks() const { return c.step + 1; }

  ff::TensorRef lengths_ref() const {
    if (c.lengths.empty()) return {};
    void* data = c.lengths_dtype == DType::kInt32 ? static_cast<void*>(const_cast<int32_t*>(lengths32.data()))
                                                  : static_cast<void*>(const_cast<int64_t*>(lengths64.data()));
    return ff::make_tensor(data, c.lengths_dtype, {c.batch});
  }

  static std::vector<ff::TensorRef> refs(const std::vector<TestTensor>& blocks) {
    std::vector<ff::TensorRef> r;
    for (const TestTensor& t : blocks) r.push_back(t.ref());
    return r;
  }

  ff::Eagle3ForwardArgs forward_args() const {
    ff::Eagle3ForwardArgs a;
    a.q = q.ref();
    a.k_blocks = refs(k);
    a.v_blocks = refs(v);
    a.seq_lengths = lengths_ref();
    a.out = out.ref();
    if (c.with_lse) a.lse = lse.ref();
    a.scale = c.scale;
    return a;
  }

  ff::Eagle3BackwardArgs backward_args() const {
    ff::Eagle3BackwardArgs a;
    a.q = q.ref();
    a.k_blocks = refs(k);
    a.v_blocks = refs(v);
    a.seq_lengths = lengths_ref();
    a.out = out.ref();
    a.dout = dout.ref();
    a.lse = lse.ref();
    if (c.with_dlse) a.dlse = dlse.ref();
    a.dq = dq.ref();
    a.dk_blocks = refs(dk);
    a.dv_blocks = refs(dv);
    a.scale = c.scale;
    return a;
  }

  void poison_outputs() {
    for (TestTensor* t : {&out, &lse, &dq}) t->poison();
    for (auto* list : {&dk, &dv}) {
      for (TestTensor& t : *list) t.poison();
    }
  }

  // Everything the library writes, decoded, in one vector.
  std::vector<double> all_outputs() const {
    std::vector<double> all;
    auto append = [&](const TestTensor& t) {
      const std::vector<double> values = t.values();
      all.insert(all.end(), values.begin(), values.end());
    };
    for (const TestTensor* t : {&out, &lse, &dq}) append(*t);
    for (const auto* list : {&dk, &dv}) {
      for (const TestTensor& t : *list) append(t);
    }
    return all;
  }
};

// generate_eagle3_mask of the customers' trainers (TorchSpec / SpecForge), on lengths already
// reduced by the step as they do (seq_lengths - lck): a causal part with its padding clause, or a
// suffix part that keeps the column of each later block equal to the row modulo T.
DenseMask customers_eagle3_mask(const Eagle3Case& c) {
  const int64_t t = c.seq_len, kv_len = t * (c.step + 1);
  DenseMask m{c.batch, 1, t, kv_len, std::vector<uint8_t>(c.batch * t * kv_len, 0)};
  for (int64_t b = 0; b < c.batch; ++b) {
    const int64_t length = (c.lengths.empty() ? t : c.lengths[b]) - c.step;
    for (int64_t q = 0; q < t; ++q) {
      for (int64_t kv = 0; kv < kv_len; ++kv) {
        const bool causal = q >= kv && kv < length && q < length;
        const bool suffix = kv >= t && kv % t < length && (kv - q) % t == 0;
        m.visible[(b * t + q) * kv_len + kv] = causal || suffix;
      }
    }
  }
  return m;
}

// [B, H, T, D] blocks (logical row-major values) -> [B, H, T * blocks, D], blocks in order.
std::vector<double> concatenate(const std::vector<TestTensor>& blocks) {
  const std::vector<int64_t>& s = blocks[0].sizes();
  const int64_t bh = s[0] * s[1], plane = s[2] * s[3];
  std::vector<double> cat;
  std::vector<std::vector<double>> values;
  for (const TestTensor& t : blocks) values.push_back(t.values());
  for (int64_t g = 0; g < bh; ++g) {
    for (const auto& v : values) cat.insert(cat.end(), v.begin() + g * plane, v.begin() + (g + 1) * plane);
  }
  return cat;
}

// Block j of a concatenated [B, H, T * blocks, D] result.
std::vector<double> block_of(const std::vector<double>& cat, const std::vector<int64_t>& block_sizes,
                             int64_t num_blocks, int64_t j) {
  const int64_t bh = block_sizes[0] * block_sizes[1], plane = block_sizes[2] * block_sizes[3];
  std::vector<double> out;
  for (int64_t g = 0; g < bh; ++g) {
    const auto begin = cat.begin() + (g * num_blocks + j) * plane;
    out.insert(out.end(), begin, begin + plane);
  }
  return out;
}

Eagle3Problem make_eagle3_problem(const Eagle3Case& c, uint32_t seed) {
  std::mt19937 rng(seed);
  Eagle3Problem p;
  p.c = c;
  const int64_t b = c.batch, hq = c.q_heads, hkv = c.kv_heads, t = c.seq_len, d = c.head_dim;
  const Layout other = c.layout == Layout::kHeadsOuter ? Layout::kSeqOuter : Layout::kHeadsOuter;
  for (TestTensor* x : {&p.q, &p.out, &p.dout, &p.dq}) *x = TestTensor(c.dtype, {b, hq, t, d}, c.layout);
  for (int64_t j = 0; j < p.num_blocks(); ++j) {
    const Layout layout = c.mixed_layouts && j % 2 == 1 ? other : c.layout;
    for (auto* list : {&p.k, &p.v, &p.dk, &p.dv}) {
      list->emplace_back(c.dtype, std::vector<int64_t>{b, hkv, t, d}, layout);
    }
  }
  p.lse = TestTensor(DType::kFloat32, {b, hq, t});
  p.dlse = TestTensor(DType::kFloat32, {b, hq, t});
  p.q.fill_normal(rng, kInputStddev);
  for (auto* list : {&p.k, &p.v}) {
    for (TestTensor& x : *list) x.fill_normal(rng, kInputStddev);
  }
  p.dout.fill_normal(rng, kInputStddev);
  p.dlse.fill_normal(rng, kInputStddev);
  p.lengths64 = c.lengths;
  p.lengths32.assign(c.lengths.begin(), c.lengths.end());

  DenseProblem& dp = p.dense;
  dp.batch = b;
  dp.q_heads = hq;
  dp.kv_heads = hkv;
  dp.q_len = t;
  dp.kv_len = t * p.num_blocks();
  dp.head_dim = d;
  dp.v_head_dim = d;
  dp.scale = c.scale ? *c.scale : 1.0 / std::sqrt(static_cast<double>(d));
  dp.q = p.q.values();
  dp.k = concatenate(p.k);
  dp.v = concatenate(p.v);
  dp.dout = p.dout.values();
  if (c.with_dlse) dp.dlse = p.dlse.values();
  dp.mask = customers_eagle3_mask(c);
  p.poison_outputs();
  return p;
}

// Rows that see nothing in the oracle's mask: out, dq exactly 0 and lse exactly -inf there;
// key rows that no query row sees get exactly zero dk, dv. Returns the number of such query rows.
int64_t expect_exact_zeros_where_masked(const Eagle3Problem& p) {
  const DenseProblem& d = p.dense;
  const int64_t t = d.q_len, dim = d.head_dim;
  int64_t masked_rows = 0;
  for (int64_t b = 0; b < d.batch; ++b) {
    for (int64_t i = 0; i < t; ++i) {
      bool any = false;
      for (int64_t kv = 0; kv < d.kv_len && !any; ++kv) any = d.mask(b, 0, i, kv);
      if (!any) {
        for (int64_t h = 0; h < d.q_heads; ++h) {
          const int64_t row = (b * d.q_heads + h) * t + i;
          ++masked_rows;
          if (p.c.with_lse) EXPECT_EQ(p.lse.at(row), -kInf) << "lse row " << row;
          for (int64_t e = 0; e < dim; ++e) {
            EXPECT_EQ(p.out.at(row * dim + e), 0.0) << "out row " << row;
            EXPECT_EQ(p.dq.at(row * dim + e), 0.0) << "dq row " << row;
          }
        }
      }
      for (int64_t j = 0; j < p.num_blocks(); ++j) {  // column j * T + i: key row i of block j
        bool seen = false;
        for (int64_t q = 0; q < t && !seen; ++q) seen = d.mask(b, 0, q, j * t + i);
        if (seen) continue;
        for (int64_t hk = 0; hk < d.kv_heads; ++hk) {
          const int64_t row = (b * d.kv_heads + hk) * t + i;
          for (int64_t e = 0; e < dim; ++e) {
            EXPECT_EQ(p.dk[j].at(row * dim + e), 0.0) << "dk_blocks[" << j << "] row " << row;
            EXPECT_EQ(p.dv[j].at(row * dim + e), 0.0) << "dv_blocks[" << j << "] row " << row;
          }
        }
      }
    }
  }
  return masked_rows;
}

class Eagle3VsDense : public ::testing::TestWithParam<Eagle3Case> {};

// The reference rounds a float64 result once into the output dtype, so every element must be
// within that rounding (rounded_from) of the oracle evaluated on the same (rounded) inputs.
TEST_P(Eagle3VsDense, ForwardAndBackwardMatchFloat64Oracle) {
  const Eagle3Case& c = GetParam();
  Eagle3Problem p = make_eagle3_problem(c, kSeed);
  ff::eagle3_forward(p.forward_args());
  if (!c.with_lse) {
    EXPECT_TRUE(std::isnan(p.lse.at(0))) << "lse was not requested but was written";
    p.lse = TestTensor(DType::kFloat32, {c.batch, c.q_heads, c.seq_len});  // backward reads no lse values
  }
  ff::eagle3_backward(p.backward_args());
  const DenseResult want = dense_attention(p.dense);

  EXPECT_TRUE(rounded_from("out", p.out.values(), want.out, c.dtype));
  if (c.with_lse) EXPECT_TRUE(rounded_from("lse", p.lse.values(), want.lse, DType::kFloat32));
  EXPECT_TRUE(rounded_from("dq", p.dq.values(), want.dq, c.dtype));
  const std::vector<int64_t> block_sizes = p.k[0].sizes();
  for (int64_t j = 0; j < p.num_blocks(); ++j) {
    const std::string dk_name = "dk_blocks[" + std::to_string(j) + "]";
    const std::string dv_name = "dv_blocks[" + std::to_string(j) + "]";
    EXPECT_TRUE(rounded_from(dk_name.c_str(), p.dk[j].values(), block_of(want.dk, block_sizes, p.num_blocks(), j),
                             c.dtype));
    EXPECT_TRUE(rounded_from(dv_name.c_str(), p.dv[j].values(), block_of(want.dv, block_sizes, p.num_blocks(), j),
                             c.dtype));
  }
  const int64_t masked_rows = expect_exact_zeros_where_masked(p);
  bool has_short_sample = false;
  for (int64_t length : c.lengths) has_short_sample = has_short_sample || length < c.seq_len;
  if (c.step > 0 || has_short_sample) EXPECT_GT(masked_rows, 0) << "the case should have invalid rows";
}

using L = Layout;
constexpr DType kF32 = DType::kFloat32, kF16 = DType::kFloat16, kBF16 = DType::kBFloat16, kI32 = DType::kInt32,
                kI64 = DType::kInt64;

// name, B, Hq, Hkv, T, D, step, dtype, layout, lengths, lengths dtype, lse, dlse, scale, mixed layouts
const Eagle3Case kDenseCases[] = {
    {"t1_step0_single_row", 1, 1, 1, 1, 64, 0},
    {"t1_step1_every_row_invalid", 2, 2, 1, 1, 64, 1},
    {"t17_step1_gqa4_seq_outer_int32_lengths", 2, 4, 1, 17, 64, 1, kF32, L::kSeqOuter, {17, 5}, kI32},
    {"t17_step3_hdim128", 1, 2, 1, 17, 128, 3},
    {"t17_step6_gqa5_mixed_layouts", 2, 5, 1, 17, 64, 6, kF32, L::kHeadsOuter, {17, 7}, kI64, true, true,
     std::nullopt, true},
    {"t130_step0_causal_lengths_no_dlse", 2, 4, 4, 130, 64, 0, kF32, L::kHeadsOuter, {130, 77}, kI64, true, false},
    {"t130_step3_gqa5_bf16_sample_shorter_than_step", 2, 5, 1, 130, 64, 3, kBF16, L::kHeadsOuter, {130, 2}},
    {"t130_step1_bf16_seq_outer", 1, 2, 2, 130, 64, 1, kBF16, L::kSeqOuter},
    {"t300_step6_f16_seq_outer_lengths", 2, 2, 2, 300, 64, 6, kF16, L::kSeqOuter, {300, 200}, kI32},
    {"t300_step6_gqa4_no_lse_explicit_scale", 1, 4, 1, 300, 64, 6, kF32, L::kHeadsOuter, {}, kI64, false, true, 0.2},
};

INSTANTIATE_TEST_SUITE_P(Eagle3, Eagle3VsDense, ::testing::ValuesIn(kDenseCases),
                         [](const ::testing::TestParamInfo<Eagle3Case>& info) { return std::string(info.param.name); });

// ---- properties ------------------------------------------------------------------------------

void expect_same_bits(const std::vector<double>& a, const std::vector<double>& b) {
  ASSERT_EQ(a.size(), b.size());
  int64_t differing = 0;
  for (size_t i = 0; i < a.size(); ++i) differing += !(a[i] == b[i]);  // NaN never equal
  EXPECT_EQ(differing, 0);
}

const Eagle3Case kPropertyCase{"property", 2, 4, 2, 130, 64, 3, kF32, L::kSeqOuter, {130, 41}};

void run_all(Eagle3Problem& p) {
  p.poison_outputs();
  ff::eagle3_forward(p.forward_args());
  ff::eagle3_backward(p.backward_args());
}

TEST(Eagle3Reference, SameBitsOnEveryRun) {
  Eagle3Problem p = make_eagle3_problem(kPropertyCase, kSeed);
  run_all(p);
  const std::vector<double> first = p.all_outputs();
  run_all(p);
  expect_same_bits(first, p.all_outputs());
}

// P is recomputed from q and the blocks: out and lse are not read, so NaN there changes nothing.
TEST(Eagle3Reference, BackwardIgnoresOutAndLseValues) {
  Eagle3Problem p = make_eagle3_problem(kPropertyCase, kSeed);
  run_all(p);
  const std::vector<double> first = p.all_outputs();
  p.poison_outputs();  // out and lse are NaN now
  ff::eagle3_backward(p.backward_args());
  std::vector<double> again = p.all_outputs();
  const size_t grads_begin = static_cast<size_t>(p.out.numel() + p.lse.numel());
  expect_same_bits(std::vector<double>(first.begin() + grads_begin, first.end()),
                   std::vector<double>(again.begin() + grads_begin, again.end()));
}

// Gradients are written, not accumulated: a second backward over non-zero gradients gives the same.
TEST(Eagle3Reference, BackwardOverwritesGradients) {
  Eagle3Problem p = make_eagle3_problem(kPropertyCase, kSeed);
  run_all(p);
  const std::vector<double> first = p.all_outputs();
  ff::eagle3_backward(p.backward_args());
  expect_same_bits(first, p.all_outputs());
}

// ---- gradients against central differences ---------------------------------------------------

// loss = sum dout . out + sum dlse . lse over finite lse; `magnitude` is the same sum of absolute
// values, for the rounding bound.
struct Loss {
  double value = 0.0;
  double magnitude = 0.0;
};

Loss evaluate_loss(Eagle3Problem& p) {
  ff::eagle3_forward(p.forward_args());
  Loss loss;
  for (int64_t e = 0; e < p.out.numel(); ++e) {
    loss.value += p.dout.at(e) * p.out.at(e);
    loss.magnitude += std::abs(p.dout.at(e) * p.out.at(e));
  }
  for (int64_t e = 0; e < p.lse.numel(); ++e) {
    if (std::isinf(p.lse.at(e))) continue;
    loss.value += p.dlse.at(e) * p.lse.at(e);
    loss.magnitude += std::abs(p.dlse.at(e) * p.lse.at(e));
  }
  return loss;
}

// 2^-7: x +- h and x +- h/2 are exact in float32 for every |x| < 2^16.
constexpr double kStep = 1.0 / 128;
constexpr int kElementsPerTensor = 5;

// Richardson's (4 D(h/2) - D(h)) / 3 of central differences cancels the h^2 term; what remains is
// the float32 rounding of out and lse (3E / h, E = 2^-24 * magnitude, as in test_reference.cpp's
// ReferenceGradCheck) and the float32 rounding of the analytic gradient. A missing term (a
// row-local key's dk/dv, the dlse term, a GQA sum, the scale) moves gradients by 10% or more.
TEST(Eagle3GradCheck, MatchesCentralDifferences) {
  // Sample 1 has length 3 = step + 1: one valid row; sample 0 has two invalid rows.
  const Eagle3Case c{"gradcheck", 2, 2, 1, 4, 64, 2, kF32, L::kSeqOuter, {4, 3}, kI32};
  Eagle3Problem p = make_eagle3_problem(c, kSeed);
  ff::eagle3_forward(p.forward_args());
  ff::eagle3_backward(p.backward_args());
  const double u = unit_roundoff(DType::kFloat32);

  std::vector<std::pair<TestTensor*, const TestTensor*>> pairs = {{&p.q, &p.dq}};
  for (int64_t j = 0; j < p.num_blocks(); ++j) {
    pairs.push_back({&p.k[j], &p.dk[j]});
    pairs.push_back({&p.v[j], &p.dv[j]});
  }
  std::mt19937 rng(kSeed);
  int64_t checked = 0, non_zero = 0;
  for (auto [input, grad] : pairs) {
    // Elements of sample 0's first two rows (always valid) and random ones.
    std::uniform_int_distribution<int64_t> pick(0, input->numel() - 1);
    std::uniform_int_distribution<int64_t> pick_valid(0, 2 * c.head_dim - 1);
    for (int n = 0; n < kElementsPerTensor; ++n) {
      const int64_t e = n % 2 == 0 ? pick_valid(rng) : pick(rng);
      const double x = input->at(e);
      auto central = [&](double h) {
        input->set(e, x + h);
        const Loss plus = evaluate_loss(p);
        input->set(e, x - h);
        const Loss minus = evaluate_loss(p);
        input->set(e, x);
        return std::pair<double, double>((plus.value - minus.value) / (2 * h),
                                         std::max(plus.magnitude, minus.magnitude));
      };
      const auto [d_h, magnitude_h] = central(kStep);
      const auto [d_half, magnitude_half] = central(kStep / 2);
      const double extrapolated = (4 * d_half - d_h) / 3;
      const double analytic = grad->at(e);
      const double bound = 3 * u * std::max(magnitude_h, magnitude_half) / kStep + u * std::abs(analytic);
      EXPECT_LE(std::abs(extrapolated - analytic), bound)
          << "element " << e << ": analytic " << analytic << ", finite differences " << extrapolated;
      ++checked;
      non_zero += analytic != 0.0;
    }
  }
  EXPECT_EQ(checked, static_cast<int64_t>(pairs.size()) * kElementsPerTensor);
  EXPECT_GE(non_zero, static_cast<int64_t>(pairs.size()) * (kElementsPerTensor / 2))
      << "too few elements with a gradient to check";
}

// ---- timing ----------------------------------------------------------------------------------

// The customers' unroll-size case. The time is printed, not asserted: the test asserts finite,
// deterministic outputs.
TEST(Eagle3Timing, ForwardBackwardB1Hq4Hkv1T1024D64Step6) {
  const Eagle3Case c{"timing", 1, 4, 1, 1024, 64, 6};
  Eagle3Problem p = make_eagle3_problem(c, kSeed);
  const auto start = std::chrono::steady_clock::now();
  ff::eagle3_forward(p.forward_args());
  const auto forward_done = std::chrono::steady_clock::now();
  ff::eagle3_backward(p.backward_args());
  const auto backward_done = std::chrono::steady_clock::now();
  const std::chrono::duration<double> forward_s = forward_done - start, backward_s = backward_done - forward_done;
  std::cout << "[ eagle3 timing ] B=1 Hq=4 Hkv=1 T=1024 D=64 step=6 float32: forward " << forward_s.count()
            << " s, backward " << backward_s.count() << " s, total " << (forward_s + backward_s).count() << " s\n";

  const std::vector<double> first = p.all_outputs();
  int64_t non_finite = 0;
  for (double x : first) non_finite += !std::isfinite(x);
  EXPECT_EQ(non_finite, static_cast<int64_t>(c.q_heads * c.step));  // lse of the last `step` rows is -inf
  run_all(p);
  expect_same_bits(first, p.all_outputs());
}

}  // namespace
