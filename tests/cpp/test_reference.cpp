// Tests of the CPU reference (src/cpu/reference_forward.cpp, reference_backward.cpp) through the
// public flashflex::forward / flashflex::backward: element conversion, agreement with a dense
// float64 oracle (reference_test_dense.hpp) over dtypes, layouts, GQA ratios, score mods and
// block masks, gradients against central differences, block-mask structure, determinism, and
// the time of one forward + backward at B=1, H=4, T=1024, D=64 (printed, never asserted).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cpu/element_io.hpp"
#include "flashflex/attention.hpp"
#include "reference_test_dense.hpp"
#include "reference_test_problem.hpp"
#include "reference_test_utils.hpp"

namespace ff = flashflex;
using ff::DType;
using ff::ScoreModKind;
using namespace ff::reference_test;

namespace {

constexpr uint32_t kSeed = 20240611;

// ---- element conversion ----------------------------------------------------------------------

using Decoder = double (*)(uint16_t);
constexpr uint32_t kNumHalfBitPatterns = 1u << 16;
constexpr uint16_t kSignBit = 0x8000;

// Every finite bit pattern decodes (independently) to a value that encodes back to itself.
void expect_round_trip(ff::cpu::HalfFormat format, Decoder decode) {
  int64_t failures = 0;
  for (uint32_t bits = 0; bits < kNumHalfBitPatterns; ++bits) {
    const double x = decode(static_cast<uint16_t>(bits));
    const uint16_t back = ff::cpu::encode_half(x, format);
    const bool ok = std::isnan(x) ? std::isnan(decode(back)) : back == bits;
    if (!ok && failures++ == 0) ADD_FAILURE() << "bits " << bits << " -> " << x << " -> " << back;
  }
  EXPECT_EQ(failures, 0);
}

// Between two neighbours a < b the midpoint goes to the even one, anything off it to the
// nearer one; the same mirrored for negatives. Past the largest finite value by half an ulp
// (or more) is inf.
void expect_round_to_nearest_even(ff::cpu::HalfFormat format, Decoder decode, uint16_t max_finite, uint16_t inf) {
  int64_t failures = 0;
  auto check = [&](double x, uint16_t expected) {
    const uint16_t got = ff::cpu::encode_half(x, format);
    const uint16_t got_negative = ff::cpu::encode_half(-x, format);
    if ((got != expected || got_negative != (expected | kSignBit)) && failures++ == 0) {
      ADD_FAILURE() << "x " << x << ": got " << got << " / " << got_negative << ", expected " << expected;
    }
  };
  for (uint16_t n = 0; n < max_finite; ++n) {
    const double a = decode(n), b = decode(static_cast<uint16_t>(n + 1));
    const double mid = 0.5 * (a + b);  // exact: a and b have few significant bits
    check(mid, (n % 2 == 0) ? n : static_cast<uint16_t>(n + 1));
    check(std::nextafter(mid, kInf), static_cast<uint16_t>(n + 1));
    check(std::nextafter(mid, 0.0), n);
  }
  const double largest = decode(max_finite);
  const double overflow = largest + 0.5 * (largest - decode(static_cast<uint16_t>(max_finite - 1)));
  check(overflow, inf);
  check(std::nextafter(overflow, 0.0), max_finite);
  EXPECT_EQ(failures, 0);
}

constexpr uint16_t kFloat16MaxFinite = 0x7bff, kFloat16Inf = 0x7c00, kFloat16One = 0x3c00;
constexpr uint16_t kBFloat16MaxFinite = 0x7f7f, kBFloat16Inf = 0x7f80, kBFloat16One = 0x3f80;

TEST(ReferenceElementIo, Float16RoundTripsEveryBitPattern) {
  expect_round_trip(ff::cpu::kFloat16Format, decode_float16_for_test);
}

TEST(ReferenceElementIo, BFloat16RoundTripsEveryBitPattern) {
  expect_round_trip(ff::cpu::kBFloat16Format, decode_bfloat16_for_test);
}

TEST(ReferenceElementIo, Float16RoundsToNearestEven) {
  expect_round_to_nearest_even(ff::cpu::kFloat16Format, decode_float16_for_test, kFloat16MaxFinite, kFloat16Inf);
}

TEST(ReferenceElementIo, BFloat16RoundsToNearestEven) {
  expect_round_to_nearest_even(ff::cpu::kBFloat16Format, decode_bfloat16_for_test, kBFloat16MaxFinite,
                               kBFloat16Inf);
}

// The usual float32 -> bfloat16 bit trick (add 0x7fff plus the lowest kept bit) as a second oracle.
TEST(ReferenceElementIo, BFloat16MatchesFloat32BitTrick) {
  constexpr int kSamples = 1 << 20;
  constexpr uint32_t kFloatExponentMask = 0x7f800000, kFloatMantissaMask = 0x007fffff;
  std::mt19937 rng(kSeed);
  int64_t failures = 0;
  for (int i = 0; i < kSamples; ++i) {
    const uint32_t bits = static_cast<uint32_t>(rng());
    if ((bits & kFloatExponentMask) == kFloatExponentMask && (bits & kFloatMantissaMask) != 0) continue;  // NaN
    float f;
    std::memcpy(&f, &bits, sizeof f);
    const uint16_t expected = static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
    if (ff::cpu::encode_half(f, ff::cpu::kBFloat16Format) != expected && failures++ == 0) {
      ADD_FAILURE() << "float bits " << bits;
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST(ReferenceElementIo, SpecialValues) {
  using ff::cpu::encode_half;
  const auto f16 = ff::cpu::kFloat16Format;
  const auto bf16 = ff::cpu::kBFloat16Format;
  EXPECT_EQ(encode_half(1.0, f16), kFloat16One);
  EXPECT_EQ(encode_half(1.0, bf16), kBFloat16One);
  EXPECT_EQ(encode_half(-0.0, f16), kSignBit);
  EXPECT_EQ(encode_half(-0.0, bf16), kSignBit);
  EXPECT_EQ(encode_half(kInf, f16), kFloat16Inf);
  EXPECT_EQ(encode_half(-kInf, bf16), kBFloat16Inf | kSignBit);
  EXPECT_TRUE(std::isnan(decode_float16_for_test(encode_half(kNaN, f16))));
  EXPECT_TRUE(std::isnan(decode_bfloat16_for_test(encode_half(-kNaN, bf16))));
  EXPECT_EQ(encode_half(65504.0, f16), kFloat16MaxFinite);
  EXPECT_EQ(encode_half(1e300, bf16), kBFloat16Inf);
  EXPECT_EQ(encode_half(std::ldexp(1.0, -24), f16), 0x0001);  // smallest float16 subnormal
  EXPECT_EQ(encode_half(std::ldexp(1.0, -133), bf16), 0x0001);
  EXPECT_EQ(encode_half(std::numeric_limits<double>::denorm_min(), f16), 0x0000);
  EXPECT_EQ(encode_half(-std::numeric_limits<double>::denorm_min(), bf16), kSignBit);
  EXPECT_EQ(ff::cpu::decode_half(0x0001, f16), std::ldexp(1.0, -24));
  EXPECT_EQ(ff::cpu::decode_half(kBFloat16MaxFinite, bf16), decode_bfloat16_for_test(kBFloat16MaxFinite));
}

// ---- agreement with the dense float64 oracle -------------------------------------------------

// Fully masked rows give out = 0 and dq = 0 exactly and lse = -inf; keys that no query of their
// group sees give dk = dv = 0 exactly. Returns how many masked rows there were.
int64_t expect_exact_zeros_where_masked(const Problem& p) {
  const DenseProblem& d = p.dense;
  if (d.mask.visible.empty()) return 0;
  const int64_t group = d.q_heads / d.kv_heads;
  int64_t masked_rows = 0;
  for (int64_t b = 0; b < d.batch; ++b) {
    for (int64_t h = 0; h < d.q_heads; ++h) {
      for (int64_t i = 0; i < d.q_len; ++i) {
        bool any = false;
        for (int64_t j = 0; j < d.kv_len && !any; ++j) any = d.mask(b, h, i, j);
        if (any) continue;
        ++masked_rows;
        const int64_t row = (b * d.q_heads + h) * d.q_len + i;
        if (p.c.with_lse) {
          EXPECT_EQ(p.lse.at(row), -kInf) << "row " << row;
        }
        for (int64_t c = 0; c < d.head_dim; ++c) {
          EXPECT_EQ(p.out.at(row * d.v_head_dim + c), 0.0) << "out row " << row;
          EXPECT_EQ(p.dq.at(row * d.head_dim + c), 0.0) << "dq row " << row;
        }
      }
    }
    for (int64_t hk = 0; hk < d.kv_heads; ++hk) {
      for (int64_t j = 0; j < d.kv_len; ++j) {
        bool any = false;
        for (int64_t h = hk * group; h < (hk + 1) * group && !any; ++h) {
          for (int64_t i = 0; i < d.q_len && !any; ++i) any = d.mask(b, h, i, j);
        }
        if (any) continue;
        const int64_t row = (b * d.kv_heads + hk) * d.kv_len + j;
        for (int64_t c = 0; c < d.head_dim; ++c) {
          EXPECT_EQ(p.dk.at(row * d.head_dim + c), 0.0) << "dk row " << row;
          EXPECT_EQ(p.dv.at(row * d.v_head_dim + c), 0.0) << "dv row " << row;
        }
      }
    }
  }
  return masked_rows;
}

class ReferenceVsDense : public ::testing::TestWithParam<Case> {};

// The library rounds a float64 result once into the output dtype, so every element must be
// within that rounding (rounded_from) of the oracle evaluated on the same (rounded) inputs.
TEST_P(ReferenceVsDense, ForwardAndBackwardMatchFloat64Oracle) {
  const Case& c = GetParam();
  Problem p = make_problem(c, kSeed);
  ff::forward(p.forward_args());
  if (!c.with_lse) {
    EXPECT_TRUE(std::isnan(p.lse.at(0))) << "lse was not requested but was written";
    p.lse = TestTensor(DType::kFloat32, {c.batch, c.q_heads, c.q_len});  // backward reads no lse values
  }
  ff::backward(p.backward_args());
  const DenseResult want = dense_attention(p.dense);

  EXPECT_TRUE(rounded_from("out", p.out.values(), want.out, c.dtype));
  if (c.with_lse) {
    EXPECT_TRUE(rounded_from("lse", p.lse.values(), want.lse, DType::kFloat32));
  }
  EXPECT_TRUE(rounded_from("dq", p.dq.values(), want.dq, c.dtype));
  EXPECT_TRUE(rounded_from("dk", p.dk.values(), want.dk, c.dtype));
  EXPECT_TRUE(rounded_from("dv", p.dv.values(), want.dv, c.dtype));
  if (c.mod == ScoreModKind::kBias) {
    const bool expanded = c.bias_shape == BiasShape::kExpandedView;
    const std::vector<double> want_dbias =
        expanded ? want.dscore : sum_to_bias_shape(p.dense, want.dscore, p.dense.bias_batch, p.dense.bias_heads);
    EXPECT_TRUE(rounded_from("dbias", p.dbias.values(), want_dbias, c.bias_dtype));
  }
  const int64_t masked_rows = expect_exact_zeros_where_masked(p);
  if (c.mask != MaskKind::kNone) {
    EXPECT_GT(masked_rows, 0) << "the case should include fully masked rows";
  }
}

using L = Layout;
using M = MaskKind;
using S = ScoreModKind;
using BS = BiasShape;
constexpr DType kF32 = DType::kFloat32, kF16 = DType::kFloat16, kBF16 = DType::kBFloat16;

// name, B, Hq, Hkv, Tq, Tk, D, dtype, layout, mod, mask, bias shape, bias dtype, lse, dlse, scale
const Case kDenseCases[] = {
    {"f32_plain_gqa1", 2, 4, 4, 17, 113, 64},
    {"f32_softcap_gqa4_seq_outer_masked", 1, 8, 2, 239, 200, 64, kF32, L::kSeqOuter, S::kSoftcap, M::kRandom},
    {"f32_alibi_gqa5_broadcast_mask_no_lse", 2, 5, 1, 200, 239, 64, kF32, L::kHeadsOuter, S::kAlibi,
     M::kRandomBroadcast, BS::kFull, kF32, false},
    {"f32_bias_gqa7_seq_outer_masked", 1, 7, 1, 113, 300, 64, kF32, L::kSeqOuter, S::kBias, M::kRandom},
    {"f32_bias_batch_broadcast_f16_bias_no_lse", 2, 4, 2, 1, 17, 64, kF32, L::kHeadsOuter, S::kBias, M::kNone,
     BS::kBatchBroadcast, kF16, false},
    {"f32_bias_head_broadcast_bf16_bias_no_dlse", 2, 4, 1, 113, 17, 64, kF32, L::kHeadsOuter, S::kBias,
     M::kRandomPerBatch, BS::kHeadBroadcast, kBF16, true, false},
    {"f32_bias_expanded_view_masked", 2, 2, 2, 17, 239, 64, kF32, L::kSeqOuter, S::kBias, M::kRandom,
     BS::kExpandedView},
    {"f32_bias_both_broadcast_hdim256", 1, 2, 1, 113, 17, 256, kF32, L::kHeadsOuter, S::kBias, M::kNone,
     BS::kBothBroadcast},
    {"f32_first_head_fully_masked", 1, 4, 2, 17, 113, 64, kF32, L::kHeadsOuter, S::kNone, M::kFirstHeadMasked},
    {"f32_three_q_tiles_softcap_explicit_scale", 1, 2, 2, 300, 239, 64, kF32, L::kHeadsOuter, S::kSoftcap,
     M::kRandom, BS::kFull, kF32, true, true, 0.3},
    {"f32_single_element", 1, 1, 1, 1, 1, 64},
    {"f16_plain_gqa2_masked", 1, 4, 2, 200, 113, 64, kF16, L::kHeadsOuter, S::kNone, M::kRandom},
    {"f16_bias_bf16_bias_seq_outer", 1, 2, 2, 113, 113, 64, kF16, L::kSeqOuter, S::kBias, M::kRandom, BS::kFull,
     kBF16},
    {"bf16_softcap_gqa5_seq_outer_broadcast_mask", 2, 10, 2, 113, 239, 64, kBF16, L::kSeqOuter, S::kSoftcap,
     M::kRandomBroadcast},
    {"bf16_alibi_hdim128_no_dlse", 1, 4, 4, 17, 200, 128, kBF16, L::kHeadsOuter, S::kAlibi, M::kNone, BS::kFull,
     kF32, true, false},
};

INSTANTIATE_TEST_SUITE_P(Reference, ReferenceVsDense, ::testing::ValuesIn(kDenseCases),
                         [](const ::testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

// ---- block-mask structure --------------------------------------------------------------------

// Runs forward and backward and returns every output, decoded, in one vector.
std::vector<double> run_all(Problem& p) {
  p.poison_outputs();
  ff::forward(p.forward_args());
  ff::backward(p.backward_args());
  std::vector<double> all;
  for (const TestTensor* t : {&p.out, &p.lse, &p.dq, &p.dk, &p.dv}) {
    const std::vector<double> v = t->values();
    all.insert(all.end(), v.begin(), v.end());
  }
  return all;
}

// Same values (NaN never equal): sums run over a row's columns in ascending order whichever way
// the mask lists them.
void expect_same_bits(const std::vector<double>& a, const std::vector<double>& b) {
  ASSERT_EQ(a.size(), b.size());
  int64_t differing = 0;
  for (size_t i = 0; i < a.size(); ++i) differing += !(a[i] == b[i]);
  EXPECT_EQ(differing, 0);
}

const Case kStructureCase{"structure", 2, 4, 2, 239, 300, 64, kF32, L::kHeadsOuter, S::kSoftcap, M::kRandom};

TEST(ReferenceBlockMask, FullTileEqualsAllOnesPartialTile) {
  Problem p = make_problem(kStructureCase, kSeed);
  // Make tile (0, 0) fully visible everywhere so that the mask has full tiles.
  for (int64_t bh = 0; bh < p.dense.mask.batch * p.dense.mask.heads; ++bh) {
    for (int64_t i = 0; i < ff::kTileSize; ++i) {
      std::fill_n(p.dense.mask.visible.begin() + (bh * p.c.q_len + i) * p.c.kv_len, ff::kTileSize, 1);
    }
  }
  p.set_block_mask(block_mask_from_dense(p.dense.mask));
  ASSERT_GT(p.host_mask.full_kv_num_blocks[0], 0);
  const std::vector<double> with_full = run_all(p);
  p.set_block_mask(block_mask_from_dense(p.dense.mask, /*full_as_partial=*/true));
  ASSERT_EQ(p.host_mask.full_kv_num_blocks[0], 0);
  expect_same_bits(with_full, run_all(p));
}

TEST(ReferenceBlockMask, BroadcastMaskEqualsPerHeadCopies) {
  Case c = kStructureCase;
  c.mask = M::kRandomBroadcast;
  Problem p = make_problem(c, kSeed);
  const std::vector<double> broadcast = run_all(p);
  DenseMask expanded{c.batch, c.q_heads, c.q_len, c.kv_len, {}};
  for (int64_t bh = 0; bh < c.batch * c.q_heads; ++bh) {
    expanded.visible.insert(expanded.visible.end(), p.dense.mask.visible.begin(), p.dense.mask.visible.end());
  }
  p.set_block_mask(block_mask_from_dense(expanded));
  expect_same_bits(broadcast, run_all(p));
}

// Kernels visit only the listed tiles: a bitmap behind partial_tile_ids of a tile that is in
// neither list must be ignored.
TEST(ReferenceBlockMask, UnlistedTilesAreNeverVisited) {
  Problem p = make_problem(kStructureCase, kSeed);
  const std::vector<double> listed_only = run_all(p);
  ff::HostBlockMask& m = p.host_mask;
  int64_t planted = 0;
  for (size_t t = 0; t < m.partial_tile_ids.size(); ++t) {
    const int64_t row = static_cast<int64_t>(t) / m.num_kv_tiles;
    const int32_t n = static_cast<int32_t>(t % m.num_kv_tiles);
    const int32_t* full = &m.full_kv_indices[row * m.num_kv_tiles];
    const bool is_full = std::find(full, full + m.full_kv_num_blocks[row], n) != full + m.full_kv_num_blocks[row];
    if (m.partial_tile_ids[t] >= 0 || is_full) continue;
    m.partial_tile_ids[t] = static_cast<int32_t>(m.num_partial_tiles());
    m.bitmaps.insert(m.bitmaps.end(), ff::kBitmapWords, ~0u);
    ++planted;
  }
  ASSERT_GT(planted, 0) << "the random mask should have empty tiles";
  expect_same_bits(listed_only, run_all(p));
}

// ---- backward properties ---------------------------------------------------------------------

const Case kBiasGqaCase{"bias_gqa", 2, 6, 2, 113, 200, 64, kF32, L::kSeqOuter, S::kBias, M::kRandom,
                        BS::kBatchBroadcast};

// P is recomputed from q, k, v: out and lse are not read, so NaN there changes nothing.
TEST(ReferenceBackward, IgnoresOutAndLseValues) {
  Problem p = make_problem(kBiasGqaCase, kSeed);
  const std::vector<double> normal = run_all(p);
  p.poison_outputs();
  ff::backward(p.backward_args());  // out and lse are NaN now
  std::vector<double> grads_after;
  for (const TestTensor* t : {&p.dq, &p.dk, &p.dv}) {
    const std::vector<double> v = t->values();
    grads_after.insert(grads_after.end(), v.begin(), v.end());
  }
  const size_t grads_begin = p.out.numel() + p.lse.numel();
  expect_same_bits(std::vector<double>(normal.begin() + grads_begin, normal.end()), grads_after);
}

// Threads own whole (batch, kv head) groups and dbias partials are reduced in group order.
TEST(ReferenceBackward, SameBitsOnEveryRun) {
  Problem p = make_problem(kBiasGqaCase, kSeed);
  const std::vector<double> first = run_all(p);
  const std::vector<double> first_dbias = p.dbias.values();
  expect_same_bits(first, run_all(p));
  expect_same_bits(first_dbias, p.dbias.values());
}

// ---- gradients against central differences ---------------------------------------------------

// loss = sum dout . out + sum dlse . lse over finite lse (a fully masked row's lse is -inf
// whatever the inputs); `magnitude` is the same sum of absolute values, for the rounding bound.
struct Loss {
  double value = 0.0;
  double magnitude = 0.0;
};

Loss evaluate_loss(Problem& p) {
  ff::forward(p.forward_args());
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

// 2^-7: x +- h and x +- h/2 are exact in float32 for every |x| < 2^16, so the inputs move by
// exactly the step.
constexpr double kStep = 1.0 / 128;
constexpr int kElementsPerTensor = 6;

class ReferenceGradCheck : public ::testing::TestWithParam<Case> {};

// Richardson's (4 D(h/2) - D(h)) / 3 of central differences D cancels the h^2 term, leaving
// O(h^4) ~ 1e-9. What remains is the float32 rounding of out and lse: each loss is off by at
// most E = 2^-24 * magnitude, D(h) by E / h, D(h/2) by 2E / h, the extrapolation by 3E / h. The
// analytic gradient itself is float32: 2^-24 relative. The bound is worst-case: here it is about
// 1% of a typical gradient and the observed errors stay below 3% of it, while a missing factor
// (mod', scale, dlse, a GQA or broadcast sum) moves gradients by 10% or more.
TEST_P(ReferenceGradCheck, MatchesCentralDifferences) {
  const Case& c = GetParam();
  Problem p = make_problem(c, kSeed);
  ff::forward(p.forward_args());
  ff::backward(p.backward_args());
  const double u = unit_roundoff(DType::kFloat32);

  std::vector<std::pair<TestTensor*, const TestTensor*>> pairs = {{&p.q, &p.dq}, {&p.k, &p.dk}, {&p.v, &p.dv}};
  if (c.mod == S::kBias) pairs.push_back({&p.bias, &p.dbias});
  std::mt19937 rng(kSeed);
  int64_t checked = 0;
  for (auto [input, grad] : pairs) {
    std::uniform_int_distribution<int64_t> pick(0, input->numel() - 1);
    for (int n = 0; n < kElementsPerTensor; ++n) {
      const int64_t e = pick(rng);
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
    }
  }
  EXPECT_EQ(checked, static_cast<int64_t>(pairs.size()) * kElementsPerTensor);
}

// Small shapes (the rounding bound grows with the number of outputs); D = 64 is the smallest
// supported head dim.
const Case kGradCases[] = {
    {"plain_gqa2", 1, 2, 1, 3, 5, 64},
    {"softcap_masked", 1, 2, 1, 5, 7, 64, kF32, L::kHeadsOuter, S::kSoftcap, M::kRandom},
    {"alibi_broadcast_mask_seq_outer", 2, 2, 2, 4, 6, 64, kF32, L::kSeqOuter, S::kAlibi, M::kRandomBroadcast},
    {"bias_full", 1, 2, 1, 3, 5, 64, kF32, L::kHeadsOuter, S::kBias},
    {"bias_batch_broadcast", 2, 2, 1, 3, 4, 64, kF32, L::kHeadsOuter, S::kBias, M::kNone, BS::kBatchBroadcast},
    {"bias_head_broadcast_gqa3_masked", 1, 3, 1, 4, 5, 64, kF32, L::kHeadsOuter, S::kBias, M::kRandom,
     BS::kHeadBroadcast},
};

INSTANTIATE_TEST_SUITE_P(Reference, ReferenceGradCheck, ::testing::ValuesIn(kGradCases),
                         [](const ::testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

// ---- timing ----------------------------------------------------------------------------------

// The performance target of the reference (forward + backward well under 2 s on this 2-core
// machine). The time is printed, not asserted: the test asserts finite, deterministic outputs.
TEST(ReferenceTiming, ForwardBackwardB1H4T1024D64) {
  const Case c{"timing", 1, 4, 4, 1024, 1024, 64};
  Problem p = make_problem(c, kSeed);
  const auto start = std::chrono::steady_clock::now();
  ff::forward(p.forward_args());
  const auto forward_done = std::chrono::steady_clock::now();
  ff::backward(p.backward_args());
  const auto backward_done = std::chrono::steady_clock::now();
  const std::chrono::duration<double> forward_s = forward_done - start, backward_s = backward_done - forward_done;
  std::cout << "[ reference timing ] B=1 H=4 T=1024 D=64 float32: forward " << forward_s.count() << " s, backward "
            << backward_s.count() << " s, total " << (forward_s + backward_s).count() << " s\n";

  std::vector<double> first;
  for (const TestTensor* t : {&p.out, &p.lse, &p.dq, &p.dk, &p.dv}) {
    const std::vector<double> v = t->values();
    first.insert(first.end(), v.begin(), v.end());
  }
  int64_t non_finite = 0;
  for (double x : first) non_finite += !std::isfinite(x);
  EXPECT_EQ(non_finite, 0);
  expect_same_bits(first, run_all(p));
}

}  // namespace
