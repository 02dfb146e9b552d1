// Random attention problems of test_reference.cpp: the library's tensors (poisoned outputs,
// chosen dtype, layout, score mod, bias broadcast and block mask) next to the same problem in
// float64 for the dense oracle of reference_test_dense.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <ostream>
#include <random>
#include <utility>
#include <vector>

#include "flashflex/attention.hpp"
#include "reference_test_dense.hpp"
#include "reference_test_utils.hpp"

namespace flashflex::reference_test {

// Inputs are normal(0, kInputStddev): non-zero, and scores spread enough (|s| up to ~10 at
// D = 64) that softmax rows are neither uniform nor one-hot.
inline constexpr double kInputStddev = 1.5;
// ALiBi slopes are uniform in this range: at |kv - q| ~ 300 the bias reaches ~15, comparable
// with the scores, so neither term hides the other.
inline constexpr double kMinAlibiSlope = 0.005, kMaxAlibiSlope = 0.05;
// Soft cap just above typical |s|, so tanh is neither linear nor saturated.
inline constexpr double kTestSoftcap = 4.0;

enum class MaskKind {
  kNone,              // block_mask = nullptr
  kRandom,            // random tiles per (batch, query head)
  kRandomBroadcast,   // one random mask for every sample and head (batch = heads = 1)
  kRandomPerBatch,    // per sample, shared by the heads (heads = 1)
  kFirstHeadMasked,   // kRandom, with every row of sample 0, head 0 masked
};

enum class BiasShape {
  kFull,             // [B, Hq, Tq, Tk]
  kBatchBroadcast,   // [1, Hq, Tq, Tk]
  kHeadBroadcast,    // [B, 1, Tq, Tk]
  kBothBroadcast,    // [1, 1, Tq, Tk]
  kExpandedView,     // [B, Hq, Tq, Tk] with stride 0 over B and Hq (one plane in memory)
};

struct Case {
  const char* name;
  int64_t batch, q_heads, kv_heads, q_len, kv_len, head_dim;
  DType dtype = DType::kFloat32;
  Layout layout = Layout::kHeadsOuter;
  ScoreModKind mod = ScoreModKind::kNone;
  MaskKind mask = MaskKind::kNone;
  BiasShape bias_shape = BiasShape::kFull;
  DType bias_dtype = DType::kFloat32;
  bool with_lse = true;
  bool with_dlse = true;
  std::optional<double> scale;
};

// GoogleTest prints a parameter by its name instead of its bytes.
inline void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

// Random tiles (empty, full or partial with a random density), then random fully masked rows,
// with the last row of the first (batch, head) always fully masked.
inline DenseMask random_tile_mask(std::mt19937& rng, int64_t batch, int64_t heads, int64_t q_len, int64_t kv_len) {
  constexpr int kTileKinds = 4;           // empty, full, partial, partial: half the tiles partial
  constexpr double kMaskedRowChance = 0.05;
  DenseMask m{batch, heads, q_len, kv_len, std::vector<uint8_t>(batch * heads * q_len * kv_len, 0)};
  std::uniform_int_distribution<int> tile_kind(0, kTileKinds - 1);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  for (int64_t bh = 0; bh < batch * heads; ++bh) {
    for (int64_t qt = 0; qt < num_tiles(q_len); ++qt) {
      for (int64_t kt = 0; kt < num_tiles(kv_len); ++kt) {
        const int kind = tile_kind(rng);
        const double density = uniform(rng);
        for (int64_t i = qt * kTileSize; i < std::min(q_len, (qt + 1) * kTileSize); ++i) {
          for (int64_t j = kt * kTileSize; j < std::min(kv_len, (kt + 1) * kTileSize); ++j) {
            const bool visible = kind == 1 || (kind >= 2 && uniform(rng) < density);
            m.visible[(bh * q_len + i) * kv_len + j] = visible;
          }
        }
      }
    }
    for (int64_t i = 0; i < q_len; ++i) {
      const bool last_row_of_first = bh == 0 && i == q_len - 1;
      if (last_row_of_first || uniform(rng) < kMaskedRowChance) {
        std::fill_n(m.visible.begin() + (bh * q_len + i) * kv_len, kv_len, 0);
      }
    }
  }
  return m;
}

// One problem: the library's tensors and the float64 copy of the same values.
struct Problem {
  Case c;
  TestTensor q, k, v, out, lse, dout, dlse, dq, dk, dv, slopes, bias, dbias;
  HostBlockMask host_mask;
  bool has_mask = false;
  BlockMask mask_view;  // refreshed by forward_args / backward_args
  DenseProblem dense;

  // The bias as the library sees it: an expanded stride-0 view for BiasShape::kExpandedView.
  TensorRef bias_ref() const {
    TensorRef r = bias.ref();
    if (c.bias_shape == BiasShape::kExpandedView) {
      r.sizes[0] = c.batch;
      r.sizes[1] = c.q_heads;
      r.strides[0] = 0;
      r.strides[1] = 0;
    }
    return r;
  }

  ScoreMod score_mod() const {
    switch (c.mod) {
      case ScoreModKind::kNone: return ScoreMod::none();
      case ScoreModKind::kSoftcap: return ScoreMod::soft_cap(kTestSoftcap);
      case ScoreModKind::kAlibi: return ScoreMod::alibi(slopes.ref());
      case ScoreModKind::kBias: return ScoreMod::additive_bias(bias_ref());
    }
    return ScoreMod::none();
  }

  ForwardArgs forward_args() {
    if (has_mask) mask_view = host_mask.view();
    ForwardArgs a;
    a.q = q.ref();
    a.k = k.ref();
    a.v = v.ref();
    a.out = out.ref();
    if (c.with_lse) a.lse = lse.ref();
    a.scale = c.scale;
    a.score_mod = score_mod();
    a.block_mask = has_mask ? &mask_view : nullptr;
    return a;
  }

  BackwardArgs backward_args() {
    if (has_mask) mask_view = host_mask.view();
    BackwardArgs a;
    a.q = q.ref();
    a.k = k.ref();
    a.v = v.ref();
    a.out = out.ref();
    a.dout = dout.ref();
    a.lse = lse.ref();
    if (c.with_dlse) a.dlse = dlse.ref();
    a.dq = dq.ref();
    a.dk = dk.ref();
    a.dv = dv.ref();
    if (c.mod == ScoreModKind::kBias) a.dbias = dbias.ref();
    a.scale = c.scale;
    a.score_mod = score_mod();
    a.block_mask = has_mask ? &mask_view : nullptr;
    return a;
  }

  void poison_outputs() {
    for (TestTensor* t : {&out, &lse, &dq, &dk, &dv, &dbias}) t->poison();
  }

  void set_block_mask(HostBlockMask m) {
    host_mask = std::move(m);
    has_mask = true;
  }
};

inline Problem make_problem(const Case& c, uint32_t seed) {
  std::mt19937 rng(seed);
  Problem p;
  p.c = c;
  const int64_t b = c.batch, hq = c.q_heads, hkv = c.kv_heads, tq = c.q_len, tk = c.kv_len, d = c.head_dim;
  p.q = TestTensor(c.dtype, {b, hq, tq, d}, c.layout);
  p.k = TestTensor(c.dtype, {b, hkv, tk, d}, c.layout);
  p.v = TestTensor(c.dtype, {b, hkv, tk, d}, c.layout);
  p.dout = TestTensor(c.dtype, {b, hq, tq, d}, c.layout);
  p.out = TestTensor(c.dtype, {b, hq, tq, d}, c.layout);
  p.dq = TestTensor(c.dtype, {b, hq, tq, d}, c.layout);
  p.dk = TestTensor(c.dtype, {b, hkv, tk, d}, c.layout);
  p.dv = TestTensor(c.dtype, {b, hkv, tk, d}, c.layout);
  p.lse = TestTensor(DType::kFloat32, {b, hq, tq});
  p.dlse = TestTensor(DType::kFloat32, {b, hq, tq});
  for (TestTensor* t : {&p.q, &p.k, &p.v, &p.dout}) t->fill_normal(rng, kInputStddev);
  p.dlse.fill_normal(rng, kInputStddev);

  DenseProblem& dp = p.dense;
  dp.batch = b;
  dp.q_heads = hq;
  dp.kv_heads = hkv;
  dp.q_len = tq;
  dp.kv_len = tk;
  dp.head_dim = d;
  dp.v_head_dim = d;
  dp.scale = c.scale ? *c.scale : 1.0 / std::sqrt(static_cast<double>(d));
  dp.mod = c.mod;
  dp.softcap = kTestSoftcap;
  dp.q = p.q.values();
  dp.k = p.k.values();
  dp.v = p.v.values();
  dp.dout = p.dout.values();
  if (c.with_dlse) dp.dlse = p.dlse.values();

  if (c.mod == ScoreModKind::kAlibi) {
    p.slopes = TestTensor(DType::kFloat32, {hq});
    std::uniform_real_distribution<double> slope(kMinAlibiSlope, kMaxAlibiSlope);
    for (int64_t h = 0; h < hq; ++h) p.slopes.set(h, slope(rng));
    dp.alibi_slopes = p.slopes.values();
  }
  if (c.mod == ScoreModKind::kBias) {
    const bool batch_one = c.bias_shape == BiasShape::kBatchBroadcast || c.bias_shape == BiasShape::kBothBroadcast ||
                           c.bias_shape == BiasShape::kExpandedView;
    const bool heads_one = c.bias_shape == BiasShape::kHeadBroadcast || c.bias_shape == BiasShape::kBothBroadcast ||
                           c.bias_shape == BiasShape::kExpandedView;
    dp.bias_batch = batch_one ? 1 : b;
    dp.bias_heads = heads_one ? 1 : hq;
    p.bias = TestTensor(c.bias_dtype, {dp.bias_batch, dp.bias_heads, tq, tk});
    p.bias.fill_normal(rng, kInputStddev);
    dp.bias = p.bias.values();
    if (c.bias_shape == BiasShape::kExpandedView) {
      p.dbias = TestTensor(c.bias_dtype, {b, hq, tq, tk});
    } else {
      p.dbias = TestTensor(c.bias_dtype, {dp.bias_batch, dp.bias_heads, tq, tk});
    }
  }

  switch (c.mask) {
    case MaskKind::kNone: break;
    case MaskKind::kRandom: dp.mask = random_tile_mask(rng, b, hq, tq, tk); break;
    case MaskKind::kRandomBroadcast: dp.mask = random_tile_mask(rng, 1, 1, tq, tk); break;
    case MaskKind::kRandomPerBatch: dp.mask = random_tile_mask(rng, b, 1, tq, tk); break;
    case MaskKind::kFirstHeadMasked:
      dp.mask = random_tile_mask(rng, b, hq, tq, tk);
      std::fill_n(dp.mask.visible.begin(), tq * tk, 0);
      break;
  }
  if (c.mask != MaskKind::kNone) p.set_block_mask(block_mask_from_dense(dp.mask));
  p.poison_outputs();
  return p;
}

}  // namespace flashflex::reference_test
