// Tests of flashflex::Mask and the CPU builder build_block_mask (src/mask/, src/cpu/).
// Every mask is checked against a dense evaluation of its formula written here, independently
// of the library: element by element through HostBlockMask::visible, plus the structural
// invariants of the BlockMask layout (the checks live in block_mask_checks.hpp).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "flashflex/block_mask.hpp"
#include "flashflex/error.hpp"
#include "flashflex/mask.hpp"

#include "block_mask_checks.hpp"

namespace flashflex {
namespace {

using test::check_build;
using test::check_operator;
using test::check_structure;
using test::Dense;

// Lengths around the tile size (1, 17, 127, 128, 129, 300, 1000), paired at random.
constexpr int64_t kSizes[] = {1, 17, 127, 128, 129, 300, 1000};
constexpr int kRandomPairs = 6;
constexpr uint32_t kSeed = 1234;

std::vector<std::pair<int64_t, int64_t>> size_pairs(uint32_t seed) {
  std::vector<std::pair<int64_t, int64_t>> pairs = {{1, 1},     {17, 1000},  {129, 127},
                                                    {300, 300}, {256, 256}, {1000, 1000}};
  std::mt19937 rng(seed);
  std::uniform_int_distribution<size_t> pick(0, std::size(kSizes) - 1);
  for (int i = 0; i < kRandomPairs; ++i) pairs.emplace_back(kSizes[pick(rng)], kSizes[pick(rng)]);
  return pairs;
}

// ---- the formulas, written independently of the library ------------------------------------

Dense causal_formula(int64_t offset) {
  return [=](int64_t, int64_t, int64_t q, int64_t kv) { return kv <= q + offset; };
}

Dense window_formula(int64_t left, int64_t right, int64_t offset) {
  return [=](int64_t, int64_t, int64_t q, int64_t kv) {
    return q + offset - left <= kv && kv <= q + offset + right;
  };
}

Dense document_formula(std::vector<int32_t> q_ids, std::vector<int32_t> kv_ids, int64_t q_len,
                       int64_t kv_len) {
  return [=](int64_t b, int64_t, int64_t q, int64_t kv) {
    return q_ids[b * q_len + q] == kv_ids[b * kv_len + kv];
  };
}

Dense prefix_formula(std::vector<int64_t> prefix) {
  return [=](int64_t b, int64_t, int64_t q, int64_t kv) { return kv < prefix[b] || kv <= q; };
}

Dense padding_formula(std::vector<int64_t> q_lengths, std::vector<int64_t> kv_lengths) {
  return [=](int64_t b, int64_t, int64_t q, int64_t kv) {
    return (q_lengths.empty() || q < q_lengths[b]) && (kv_lengths.empty() || kv < kv_lengths[b]);
  };
}

Dense eagle3_formula(int64_t step, int64_t block_len, std::vector<int64_t> lengths) {
  return [=](int64_t b, int64_t, int64_t q, int64_t c) {
    const int64_t length = lengths.empty() ? block_len : lengths[b];
    if (q >= length - step) return false;
    if (c < block_len && c <= q) return true;
    for (int64_t j = 1; j <= step; ++j) {
      if (c == j * block_len + q) return true;
    }
    return false;
  };
}

// Runs of equal ids with random lengths; sorted ascending or shuffled between runs.
std::vector<int32_t> doc_ids(std::mt19937& rng, int64_t batch, int64_t len, int max_run, bool sorted) {
  std::vector<int32_t> ids;
  std::uniform_int_distribution<int> run_len(1, max_run);
  std::uniform_int_distribution<int32_t> shuffled_id(0, 6);
  for (int64_t b = 0; b < batch; ++b) {
    int32_t id = 0;
    for (int64_t i = 0; i < len;) {
      const int64_t run = std::min<int64_t>(run_len(rng), len - i);
      for (int64_t k = 0; k < run; ++k) ids.push_back(id);
      i += run;
      id = sorted ? id + 1 : shuffled_id(rng);
    }
  }
  return ids;
}

// ---- Mask::operator() ------------------------------------------------------------------------

TEST(MaskPredicate, BuiltInsMatchTheirFormulas) {
  constexpr int64_t kLen = 40;
  check_operator(Mask::causal(), 1, 1, kLen, kLen, causal_formula(0));
  check_operator(Mask::causal(-5), 1, 1, kLen, kLen, causal_formula(-5));
  check_operator(Mask::sliding_window(3, 2, 7), 1, 1, kLen, kLen, window_formula(3, 2, 7));
  const std::vector<int32_t> q_ids = {0, 0, 1, 1, 2, 0, 0, 3, 3, 3};
  const std::vector<int32_t> kv_ids = {3, 0, 2, 1, 1, 1, 0, 0};
  check_operator(Mask::document(q_ids, kv_ids, 2), 2, 1, 5, 4, document_formula(q_ids, kv_ids, 5, 4));
  check_operator(Mask::document(q_ids, {}, 2), 2, 1, 5, 5, document_formula(q_ids, q_ids, 5, 5));
  check_operator(Mask::prefix_lm({0, 7, 50}), 3, 1, kLen, kLen, prefix_formula({0, 7, 50}));
  check_operator(Mask::padding({3, 40}, {}), 2, 1, kLen, kLen, padding_formula({3, 40}, {}));
  check_operator(Mask::padding({}, {0, 9}), 2, 1, kLen, kLen, padding_formula({}, {0, 9}));
  check_operator(Mask::eagle3(3, 10, {10, 6, 2}), 3, 1, 10, 40, eagle3_formula(3, 10, {10, 6, 2}));
  check_operator(Mask::eagle3(2, 7), 1, 1, 7, 21, eagle3_formula(2, 7, {}));
}

TEST(MaskPredicate, CombinationsAndUserPredicates) {
  constexpr int64_t kLen = 30;
  const Dense user = [](int64_t b, int64_t h, int64_t q, int64_t kv) {
    return (q + 2 * kv + h + b) % 3 == 0;
  };
  const Mask both = Mask::causal() & Mask::predicate(user);
  check_operator(both, 2, 3, kLen, kLen, [&](int64_t b, int64_t h, int64_t q, int64_t kv) {
    return kv <= q && user(b, h, q, kv);
  });
  const Mask either = Mask::sliding_window(1, 1) | Mask::padding({}, {4});
  check_operator(either, 1, 1, kLen, kLen, [](int64_t, int64_t, int64_t q, int64_t kv) {
    return (q - 1 <= kv && kv <= q + 1) || kv < 4;
  });
}

TEST(MaskPredicate, BatchAndHeadDependence) {
  EXPECT_EQ(Mask::causal().batch(), 0);
  EXPECT_EQ(Mask::padding({}, {}).batch(), 0);
  EXPECT_EQ(Mask::padding({}, {1, 2}).batch(), 2);
  EXPECT_EQ(Mask::prefix_lm({1, 2, 3}).batch(), 3);
  EXPECT_EQ(Mask::document({0, 0, 1, 1}, {}, 2).batch(), 2);
  EXPECT_EQ(Mask::eagle3(1, 4).batch(), 0);
  EXPECT_EQ(Mask::eagle3(1, 4, {4, 4}).batch(), 2);
  EXPECT_EQ((Mask::causal() & Mask::prefix_lm({1, 2})).batch(), 2);
  EXPECT_EQ((Mask::prefix_lm({1, 2}) | Mask::padding({3, 4}, {})).batch(), 2);
  const Mask user = Mask::predicate([](int64_t, int64_t, int64_t, int64_t) { return true; });
  EXPECT_FALSE(Mask::causal().depends_on_head());
  EXPECT_TRUE(user.depends_on_head());
  EXPECT_TRUE((Mask::causal() | (Mask::causal() & user)).depends_on_head());
  EXPECT_FALSE(Mask::causal().depends_on_sample());
  EXPECT_TRUE(Mask::prefix_lm({1, 2}).depends_on_sample());
  EXPECT_TRUE((Mask::causal() & user).depends_on_sample());
}

// ---- build_block_mask, one built-in at a time ----------------------------------------------

TEST(BlockMaskBuilder, Causal) {
  for (const auto& [q_len, kv_len] : size_pairs(kSeed)) {
    for (int64_t offset : {int64_t{0}, kv_len - q_len, int64_t{-50}, int64_t{200}}) {
      SCOPED_TRACE("offset " + std::to_string(offset));
      check_build(Mask::causal(offset), 2, 3, q_len, kv_len, causal_formula(offset), 1, 1);
    }
  }
}

TEST(BlockMaskBuilder, SlidingWindow) {
  for (const auto& [q_len, kv_len] : size_pairs(kSeed + 1)) {
    for (const auto& [left, right, offset] :
         {std::tuple<int64_t, int64_t, int64_t>{0, 0, 0}, {5, 0, 0}, {130, 140, 3}, {300, 1, -129}}) {
      SCOPED_TRACE("window " + std::to_string(left) + " " + std::to_string(right) + " " +
                   std::to_string(offset));
      check_build(Mask::sliding_window(left, right, offset), 1, 1, q_len, kv_len,
                  window_formula(left, right, offset), 1, 1);
    }
  }
}

TEST(BlockMaskBuilder, DocumentSortedUnsortedAndCross) {
  std::mt19937 rng(kSeed + 2);
  constexpr int64_t kBatch = 2;
  for (const auto& [q_len, kv_len] : size_pairs(kSeed + 2)) {
    for (int max_run : {1, 40, 400}) {
      for (bool sorted : {true, false}) {
        SCOPED_TRACE("max_run " + std::to_string(max_run) + (sorted ? ", sorted" : ", unsorted"));
        const auto q_ids = doc_ids(rng, kBatch, q_len, max_run, sorted);
        const auto kv_ids = doc_ids(rng, kBatch, kv_len, max_run, sorted);
        check_build(Mask::document(q_ids, kv_ids, kBatch), kBatch, 2, q_len, kv_len,
                    document_formula(q_ids, kv_ids, q_len, kv_len), kBatch, 1);
        check_build(Mask::document(q_ids, {}, kBatch), kBatch, 1, q_len, q_len,
                    document_formula(q_ids, q_ids, q_len, q_len), kBatch, 1);
      }
    }
  }
}

TEST(BlockMaskBuilder, DocumentOfOneIdIsFull) {
  const std::vector<int32_t> ids(2 * 256, 7);
  const HostBlockMask m = check_build(Mask::document(ids, {}, 2), 2, 1, 256, 256,
                                      [](int64_t, int64_t, int64_t, int64_t) { return true; }, 2, 1);
  EXPECT_EQ(m.num_partial_tiles(), 0);
  for (int32_t count : m.full_kv_num_blocks) EXPECT_EQ(count, 2);
}

TEST(BlockMaskBuilder, PrefixLm) {
  for (const auto& [q_len, kv_len] : size_pairs(kSeed + 3)) {
    // Prefixes ending inside, at the last column of and just past a tile.
    const std::vector<int64_t> prefix = {0, 1, 127, 128, 130, 255, kv_len + 5};
    check_build(Mask::prefix_lm(prefix), 7, 1, q_len, kv_len, prefix_formula(prefix), 7, 1);
  }
}

TEST(BlockMaskBuilder, PaddingWithFullyMaskedRows) {
  for (const auto& [q_len, kv_len] : size_pairs(kSeed + 4)) {
    const std::vector<int64_t> q_lengths = {q_len, 0, q_len / 2, 129};
    const std::vector<int64_t> kv_lengths = {kv_len, kv_len / 3, 0, 128};
    check_build(Mask::padding(q_lengths, kv_lengths), 4, 1, q_len, kv_len,
                padding_formula(q_lengths, kv_lengths), 4, 1);
    check_build(Mask::padding(q_lengths, {}), 4, 1, q_len, kv_len, padding_formula(q_lengths, {}),
                4, 1);
    check_build(Mask::padding({}, kv_lengths), 4, 1, q_len, kv_len,
                padding_formula({}, kv_lengths), 4, 1);
    check_build(Mask::padding({}, {}), 3, 2, q_len, kv_len, padding_formula({}, {}), 1, 1);
  }
}

TEST(BlockMaskBuilder, Eagle3) {
  // 255 = 2 * 128 - 1: a kv tile of block 1 touches the diagonal at its corner only.
  for (int64_t block_len : {1, 17, 127, 128, 129, 255, 300, 1000}) {
    for (int64_t step : {0, 1, 3}) {
      SCOPED_TRACE("block_len " + std::to_string(block_len) + ", step " + std::to_string(step));
      const int64_t kv_len = (step + 1) * block_len;
      check_build(Mask::eagle3(step, block_len), 2, 2, block_len, kv_len,
                  eagle3_formula(step, block_len, {}), 1, 1);
      // Sample 1 is shorter, sample 2 has no valid row at all (lengths are at most block_len).
      const std::vector<int64_t> lengths = {block_len, std::min(block_len, block_len / 2 + step),
                                            std::min(block_len, step)};
      check_build(Mask::eagle3(step, block_len, lengths), 3, 1, block_len, kv_len,
                  eagle3_formula(step, block_len, lengths), 3, 1);
    }
  }
}

TEST(BlockMaskBuilder, Eagle3TileCounts) {
  // T = 1024, step 2, every row valid: q tile i has full tiles 0..i-1, a partial diagonal tile i
  // and one partial suffix tile j * 8 + i per later block (Mask::eagle3, include/flashflex/mask.hpp). Lengths are
  // at most T, so the all-valid mask is the TTT predicate without its length clause (the builder's
  // tiles are exact either way). With the default L = T the last `step` rows see nothing, so the
  // last q tile has no full tile: its causal tiles become partial.
  constexpr int64_t kBlockLen = 1024;
  constexpr int64_t kStep = 2;
  constexpr int64_t kTilesPerBlock = kBlockLen / kTileSize;
  constexpr int64_t kLast = kTilesPerBlock - 1;
  const Mask every_row_valid = Mask::predicate([](int64_t, int64_t, int64_t q, int64_t c) {
    return c < kBlockLen ? c <= q : c % kBlockLen == q;
  });
  const HostBlockMask all_valid = build_block_mask(every_row_valid, 1, 1, kBlockLen, (kStep + 1) * kBlockLen);
  const HostBlockMask last_rows_masked =
      build_block_mask(Mask::eagle3(kStep, kBlockLen), 1, 1, kBlockLen, (kStep + 1) * kBlockLen);
  for (const HostBlockMask* m : {&all_valid, &last_rows_masked}) {
    check_structure(*m);
    for (int64_t i = 0; i < kTilesPerBlock; ++i) {
      const bool causal_partial = m == &last_rows_masked && i == kLast;
      EXPECT_EQ(m->full_kv_num_blocks[i], causal_partial ? 0 : i);
      EXPECT_EQ(m->kv_num_blocks[i], causal_partial ? i + 1 + kStep : 1 + kStep);
    }
    // The suffix tiles of q tile i, after its causal ones.
    const int32_t* last = &m->kv_indices[kLast * m->num_kv_tiles + m->kv_num_blocks[kLast] - kStep];
    for (int64_t j = 1; j <= kStep; ++j) EXPECT_EQ(last[j - 1], j * kTilesPerBlock + kLast);
  }
}

// ---- user predicates, combinations, broadcasting --------------------------------------------

// A user predicate may read b and h: the result keeps every sample and head.
TEST(BlockMaskBuilder, UserPredicateDependsOnSampleAndHead) {
  const Dense fn = [](int64_t b, int64_t h, int64_t q, int64_t kv) { return kv + 100 * h + 7 * b <= q; };
  for (const auto& [q_len, kv_len] : size_pairs(kSeed + 5)) {
    check_build(Mask::predicate(fn), 2, 3, q_len, kv_len, fn, 2, 3);
  }
}

TEST(BlockMaskBuilder, UserPredicateWithPerSampleData) {
  const Dense fn = [](int64_t b, int64_t h, int64_t q, int64_t kv) {
    return (q + kv + b + h) % 4 != 0;
  };
  const std::vector<int64_t> kv_lengths = {300, 17};
  check_build(Mask::padding({}, kv_lengths) & Mask::predicate(fn), 2, 2, 129, 300,
              [&](int64_t b, int64_t h, int64_t q, int64_t kv) {
                return kv < kv_lengths[b] && fn(b, h, q, kv);
              },
              2, 2);
}

TEST(BlockMaskBuilder, AndOrCombinations) {
  std::mt19937 rng(kSeed + 6);
  for (const auto& [q_len, kv_len] : size_pairs(kSeed + 6)) {
    const auto ids = doc_ids(rng, 2, kv_len, 200, false);
    const std::vector<int64_t> prefix = {0, 150};
    const Dense causal = causal_formula(kv_len - q_len);
    const Dense window = window_formula(200, 0, 0);
    const Dense document = document_formula(ids, ids, kv_len, kv_len);
    const Dense prefix_lm = prefix_formula(prefix);
    const std::vector<int64_t> q_lengths = {q_len, std::max<int64_t>(0, q_len - 10)};
    const Dense padding = padding_formula(q_lengths, {});
    check_build(Mask::causal(kv_len - q_len) & Mask::sliding_window(200, 0), 1, 1, q_len, kv_len,
                [&](int64_t b, int64_t h, int64_t q, int64_t kv) {
                  return causal(b, h, q, kv) && window(b, h, q, kv);
                },
                1, 1);
    check_build(Mask::document(ids, {}, 2) & Mask::causal(), 2, 1, kv_len, kv_len,
                [&](int64_t b, int64_t h, int64_t q, int64_t kv) {
                  return document(b, h, q, kv) && kv <= q;
                },
                2, 1);
    check_build(Mask::prefix_lm(prefix) | Mask::sliding_window(0, 3), 2, 1, q_len, kv_len,
                [&](int64_t b, int64_t h, int64_t q, int64_t kv) {
                  return prefix_lm(b, h, q, kv) || window_formula(0, 3, 0)(b, h, q, kv);
                },
                2, 1);
    check_build((Mask::causal() | Mask::padding({}, {5, 5})) & Mask::padding(q_lengths, {}), 2, 1,
                q_len, kv_len,
                [&](int64_t b, int64_t h, int64_t q, int64_t kv) {
                  return (kv <= q || kv < 5) && padding(b, h, q, kv);
                },
                2, 1);
  }
}

TEST(BlockMaskBuilder, RefinementTurnsMaybeIntoFullOrEmpty) {
  // kv <= q and kv >= q + 1 are complements: each alone leaves the diagonal tiles "maybe";
  // only their bitmaps show that the OR is all true and the AND all false.
  constexpr int64_t kUnbounded = int64_t{1} << 40;
  const Mask below = Mask::causal();
  const Mask above = Mask::sliding_window(0, kUnbounded, 1);
  const Dense all = [](int64_t, int64_t, int64_t, int64_t) { return true; };
  const Dense none = [](int64_t, int64_t, int64_t, int64_t) { return false; };
  const HostBlockMask full = check_build(below | above, 1, 1, 256, 384, all, 1, 1);
  EXPECT_EQ(full.num_partial_tiles(), 0);
  for (int32_t count : full.full_kv_num_blocks) EXPECT_EQ(count, 3);
  const HostBlockMask empty = check_build(below & above, 1, 1, 256, 384, none, 1, 1);
  EXPECT_EQ(empty.num_partial_tiles(), 0);
  for (int32_t count : empty.full_kv_num_blocks) EXPECT_EQ(count, 0);
  // A ragged size keeps the tail tiles partial even when every in-range element is visible.
  const HostBlockMask ragged = check_build(below | above, 1, 1, 300, 300, all, 1, 1);
  EXPECT_EQ(ragged.num_partial_tiles(), 5);
  check_build(below & above, 1, 1, 300, 300, none, 1, 1);
}

TEST(BlockMaskBuilder, UserPredicateRunsOnlyWhereBuiltInsDoNotDecide) {
  constexpr int64_t kLen = 300;
  int64_t calls = 0;
  bool outside = false;  // a call where causal already says no, or past the lengths
  const Mask user = Mask::predicate([&](int64_t, int64_t, int64_t q, int64_t kv) {
    ++calls;
    outside = outside || kv > q || q >= kLen || kv >= kLen;
    return (q + kv) % 2 == 0;
  });
  const Dense formula = [](int64_t, int64_t, int64_t q, int64_t kv) {
    return kv <= q && (q + kv) % 2 == 0;
  };
  build_block_mask(Mask::causal() & user, 1, 1, kLen, kLen);
  EXPECT_FALSE(outside);
  EXPECT_EQ(calls, kLen * (kLen + 1) / 2);
  // With the user predicate first, it still never runs in a tile that causal rules out.
  calls = 0;
  bool ruled_out_tile = false;
  const Mask user_first = Mask::predicate([&](int64_t, int64_t, int64_t q, int64_t kv) {
    ++calls;
    ruled_out_tile = ruled_out_tile || kv / kTileSize > q / kTileSize;
    return (q + kv) % 2 == 0;
  });
  check_build(user_first & Mask::causal(), 1, 1, kLen, kLen, formula, 1, 1);
  EXPECT_FALSE(ruled_out_tile);
  EXPECT_GT(calls, 0);
  // An OR evaluates its right side only where its left side does not already hold.
  calls = 0;
  outside = false;
  const Mask user_above = Mask::predicate([&](int64_t, int64_t, int64_t q, int64_t kv) {
    ++calls;
    outside = outside || kv <= q;
    return (q + kv) % 2 == 0;
  });
  build_block_mask(Mask::causal() | user_above, 1, 1, kLen, kLen);
  EXPECT_FALSE(outside);
  EXPECT_EQ(calls, kLen * (kLen - 1) / 2);
}

TEST(BlockMaskBuilder, CausalTileCounts) {
  constexpr int64_t kLen = 1024;
  constexpr int64_t kTiles = kLen / kTileSize;
  const HostBlockMask m = build_block_mask(Mask::causal(), 4, 8, kLen, kLen);
  EXPECT_EQ(m.batch, 1);
  EXPECT_EQ(m.heads, 1);
  EXPECT_EQ(m.num_partial_tiles(), kTiles);
  for (int64_t i = 0; i < kTiles; ++i) {
    EXPECT_EQ(m.full_kv_num_blocks[i], i);
    EXPECT_EQ(m.kv_num_blocks[i], 1);
    EXPECT_EQ(m.q_num_blocks[i], 1);
    EXPECT_EQ(m.full_q_num_blocks[i], kTiles - 1 - i);
  }
}

// ---- build time at the customers' sizes (printed, not asserted) ------------------------------

double best_build_ms(const Mask& mask, int64_t q_len, int64_t kv_len, HostBlockMask& out) {
  constexpr int kRuns = 3;
  double best = std::numeric_limits<double>::infinity();
  for (int i = 0; i < kRuns; ++i) {
    const auto start = std::chrono::steady_clock::now();
    out = build_block_mask(mask, 1, 1, q_len, kv_len);
    const std::chrono::duration<double, std::milli> took = std::chrono::steady_clock::now() - start;
    best = std::min(best, took.count());
  }
  return best;
}

TEST(BlockMaskBuilderTiming, Eagle3AndCausalAt16k) {
  constexpr int64_t kBlockLen = 16384;
  constexpr int64_t kStep = 6;
  constexpr int64_t kTilesPerBlock = kBlockLen / kTileSize;
  HostBlockMask m;
  const double eagle3_ms =
      best_build_ms(Mask::eagle3(kStep, kBlockLen), kBlockLen, (kStep + 1) * kBlockLen, m);
  // 9024 non-empty tiles (Mask::eagle3); partial are the diagonal and suffix tiles,
  // and the causal tiles of the last q tile, whose last kStep rows see nothing (L = T).
  EXPECT_EQ(m.num_partial_tiles(), (kStep + 1) * kTilesPerBlock + kTilesPerBlock - 1);
  int64_t full = 0;
  for (int32_t count : m.full_kv_num_blocks) full += count;
  EXPECT_EQ(full + m.num_partial_tiles(), 9024);
  const double causal_ms = best_build_ms(Mask::causal(), kBlockLen, kBlockLen, m);
  EXPECT_EQ(m.num_partial_tiles(), kTilesPerBlock);
  std::printf("build_block_mask (best of 3): eagle3(step %lld, T %lld) %.2f ms, causal(%lld) %.2f ms\n",
              static_cast<long long>(kStep), static_cast<long long>(kBlockLen), eagle3_ms,
              static_cast<long long>(kBlockLen), causal_ms);
}

// ---- validation: one test per message ------------------------------------------------------

template <typename Fn>
void expect_invalid(Fn&& fn, const std::string& message) {
  try {
    fn();
    ADD_FAILURE() << "no Error thrown; expected: " << message;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_EQ(std::string(e.what()), message);
  }
}

TEST(MaskValidation, BatchBelowOne) {
  expect_invalid([] { build_block_mask(Mask::causal(), 0, 1, 8, 8); },
                 "build_block_mask: expected batch >= 1, got 0");
}

TEST(MaskValidation, HeadsBelowOne) {
  expect_invalid([] { build_block_mask(Mask::causal(), 1, -2, 8, 8); },
                 "build_block_mask: expected heads >= 1, got -2");
}

TEST(MaskValidation, QLenBelowOne) {
  expect_invalid([] { build_block_mask(Mask::causal(), 1, 1, 0, 8); },
                 "build_block_mask: expected q_len >= 1, got 0");
}

TEST(MaskValidation, KvLenAboveInt32) {
  expect_invalid([] { build_block_mask(Mask::causal(), 1, 1, 8, int64_t{1} << 31); },
                 "build_block_mask: expected kv_len <= 2147483647, got 2147483648");
}

TEST(MaskValidation, BatchDiffersFromMaskData) {
  expect_invalid([] { build_block_mask(Mask::prefix_lm({1, 2}), 3, 1, 8, 8); },
                 "build_block_mask: expected batch = 2 (the samples the mask's data describe), got 3");
}

TEST(MaskValidation, Eagle3QLen) {
  expect_invalid([] { build_block_mask(Mask::eagle3(6, 16), 1, 1, 17, 112); },
                 "eagle3: expected q_len = block_len = 16, got 17");
}

TEST(MaskValidation, Eagle3KvLen) {
  expect_invalid([] { build_block_mask(Mask::eagle3(6, 16), 1, 1, 16, 100); },
                 "eagle3: expected kv_len = (step + 1) * block_len = (6 + 1) * 16 = 112, got 100");
}

TEST(MaskValidation, DocumentQIdsSize) {
  const std::vector<int32_t> ids(599, 0);
  expect_invalid([&] { build_block_mask(Mask::document(ids, {}, 2), 2, 1, 300, 300); },
                 "document: expected q_doc_ids of size batch * q_len = 2 * 300 = 600, got 599");
}

TEST(MaskValidation, DocumentKvIdsSize) {
  const std::vector<int32_t> q_ids(600, 0), kv_ids(801, 0);
  expect_invalid([&] { build_block_mask(Mask::document(q_ids, kv_ids, 2), 2, 1, 300, 400); },
                 "document: expected kv_doc_ids of size batch * kv_len = 2 * 400 = 800, got 801");
}

TEST(MaskValidation, DocumentSelfAttentionLengths) {
  const std::vector<int32_t> ids(600, 0);
  expect_invalid([&] { build_block_mask(Mask::document(ids, {}, 2), 2, 1, 300, 400); },
                 "document: expected kv_len = q_len = 300 (kv_doc_ids is empty: the same as "
                 "q_doc_ids), got 400");
}

TEST(MaskValidation, DocumentBatch) {
  expect_invalid([] { Mask::document({0}, {}, 0); }, "document: expected batch >= 1, got 0");
}

TEST(MaskValidation, SlidingWindowNegativeLeft) {
  expect_invalid([] { Mask::sliding_window(-3, 0); }, "sliding_window: expected left >= 0, got -3");
}

TEST(MaskValidation, SlidingWindowNegativeRight) {
  expect_invalid([] { Mask::sliding_window(0, -1); }, "sliding_window: expected right >= 0, got -1");
}

TEST(MaskValidation, PrefixLmEmpty) {
  expect_invalid([] { Mask::prefix_lm({}); },
                 "prefix_lm: expected prefix_lengths of at least one sample, got none");
}

TEST(MaskValidation, PrefixLmNegative) {
  expect_invalid([] { Mask::prefix_lm({4, -1}); },
                 "prefix_lm: expected prefix_lengths[1] >= 0, got -1");
}

TEST(MaskValidation, PaddingSizes) {
  expect_invalid([] { Mask::padding({1, 2, 3}, {1, 2}); },
                 "padding: expected kv_lengths of size 3 (as q_lengths), got 2");
}

TEST(MaskValidation, PaddingNegative) {
  expect_invalid([] { Mask::padding({}, {3, -4}); }, "padding: expected kv_lengths[1] >= 0, got -4");
}

TEST(MaskValidation, Eagle3NegativeStep) {
  expect_invalid([] { Mask::eagle3(-1, 16); }, "eagle3: expected step >= 0, got -1");
}

TEST(MaskValidation, Eagle3BlockLen) {
  expect_invalid([] { Mask::eagle3(2, 0); }, "eagle3: expected block_len >= 1, got 0");
}

TEST(MaskValidation, Eagle3NegativeLength) {
  expect_invalid([] { Mask::eagle3(2, 16, {-5}); }, "eagle3: expected lengths[0] >= 0, got -5");
}

TEST(MaskValidation, EmptyPredicate) {
  expect_invalid([] { Mask::predicate(nullptr); },
                 "predicate: expected a callable, got an empty function");
}

TEST(MaskValidation, CombiningDifferentBatches) {
  expect_invalid([] { return Mask::prefix_lm({1, 2}) & Mask::padding({1, 2, 3}, {}); },
                 "operator&: expected operands describing the same batch, got 2 and 3 samples");
  expect_invalid([] { return Mask::prefix_lm({1, 2}) | Mask::eagle3(0, 1, {1}); },
                 "operator|: expected operands describing the same batch, got 2 and 1 samples");
}

TEST(MaskValidation, OperatorSampleOutOfRange) {
  expect_invalid([] { return Mask::prefix_lm({1, 2})(2, 0, 0, 0); },
                 "prefix_lm: expected sample b in [0, 2), got 2");
}

TEST(MaskValidation, OperatorDocumentIndexOutOfRange) {
  expect_invalid([] { return Mask::document({0, 1, 2, 3}, {}, 2)(0, 0, 2, 0); },
                 "document: expected q in [0, 2), got 2");
}

}  // namespace
}  // namespace flashflex
