// Checks shared by the block-mask tests (tests/cpp/test_block_mask.cpp): the structural
// invariants of a HostBlockMask (layout in include/flashflex/block_mask.hpp) and an
// element-by-element comparison of a built mask, or of Mask::operator(), with a dense formula.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "flashflex/block_mask.hpp"
#include "flashflex/mask.hpp"

namespace flashflex::test {

// The mask as a plain formula, written in the test independently of the library.
using Dense = std::function<bool(int64_t b, int64_t h, int64_t q, int64_t kv)>;

// Bit (r, c) of a tile's bitmap, read as block_mask.hpp specifies.
inline bool bit(const uint32_t* tile, int64_t r, int64_t c) {
  constexpr int64_t kBitsPerWord = 32;
  return (tile[r * kBitmapWordsPerRow + c / kBitsPerWord] >> (c % kBitsPerWord)) & 1u;
}

// Layout invariants: sizes, ascending lists, the q-lists the exact transposes of the kv-lists,
// partial ids a bijection onto the bitmaps, exact partial tiles and complete full tiles.
inline void check_structure(const HostBlockMask& m) {
  const int64_t mq = num_tiles(m.q_len);
  const int64_t nk = num_tiles(m.kv_len);
  ASSERT_EQ(m.num_q_tiles, mq);
  ASSERT_EQ(m.num_kv_tiles, nk);
  const size_t pairs = static_cast<size_t>(m.batch * m.heads);
  ASSERT_EQ(m.kv_num_blocks.size(), pairs * mq);
  ASSERT_EQ(m.full_kv_num_blocks.size(), pairs * mq);
  ASSERT_EQ(m.q_num_blocks.size(), pairs * nk);
  ASSERT_EQ(m.full_q_num_blocks.size(), pairs * nk);
  for (const auto* v : {&m.kv_indices, &m.full_kv_indices, &m.q_indices, &m.full_q_indices,
                        &m.partial_tile_ids}) {
    ASSERT_EQ(v->size(), pairs * mq * nk);
  }
  ASSERT_EQ(m.bitmaps.size() % kBitmapWords, 0u);
  const int64_t num_partial = m.num_partial_tiles();
  std::vector<int> id_uses(static_cast<size_t>(num_partial), 0);

  enum : int { kEmptyTile, kPartialTile, kFullTile };
  for (size_t bh = 0; bh < pairs; ++bh) {
    std::vector<int> cls(static_cast<size_t>(mq * nk), kEmptyTile);
    // A list: `count` strictly ascending indices below `bound`, the unused entries 0.
    const auto read_list = [](const std::vector<int32_t>& counts, const std::vector<int32_t>& indices,
                              size_t list, int64_t bound) {
      std::vector<int32_t> out;
      const int32_t count = counts[list];
      EXPECT_GE(count, 0);
      EXPECT_LE(count, bound);
      for (int64_t i = 0; i < bound; ++i) {
        const int32_t v = indices[list * bound + i];
        if (i < count) {
          EXPECT_GE(v, 0);
          EXPECT_LT(v, bound);
          if (!out.empty()) {
            EXPECT_GT(v, out.back()) << "list not ascending";
          }
          out.push_back(v);
        } else {
          EXPECT_EQ(v, 0) << "unused list entry not 0";
        }
      }
      return out;
    };
    for (int64_t mi = 0; mi < mq; ++mi) {
      const size_t row = bh * mq + mi;
      const auto partial = read_list(m.kv_num_blocks, m.kv_indices, row, nk);
      const auto full = read_list(m.full_kv_num_blocks, m.full_kv_indices, row, nk);
      EXPECT_LE(partial.size() + full.size(), static_cast<size_t>(nk));
      for (int32_t n : partial) cls[mi * nk + n] = kPartialTile;
      for (int32_t n : full) {
        EXPECT_NE(cls[mi * nk + n], kPartialTile) << "tile both full and partial";
        cls[mi * nk + n] = kFullTile;
      }
    }
    for (int64_t n = 0; n < nk; ++n) {
      const size_t col = bh * nk + n;
      std::vector<int32_t> want_partial, want_full;
      for (int64_t mi = 0; mi < mq; ++mi) {
        if (cls[mi * nk + n] == kPartialTile) want_partial.push_back(static_cast<int32_t>(mi));
        if (cls[mi * nk + n] == kFullTile) want_full.push_back(static_cast<int32_t>(mi));
      }
      EXPECT_EQ(read_list(m.q_num_blocks, m.q_indices, col, mq), want_partial);
      EXPECT_EQ(read_list(m.full_q_num_blocks, m.full_q_indices, col, mq), want_full);
    }
    for (int64_t mi = 0; mi < mq; ++mi) {
      for (int64_t n = 0; n < nk; ++n) {
        const int32_t id = m.partial_tile_ids[(bh * mq + mi) * nk + n];
        const int64_t rows = std::min<int64_t>(kTileSize, m.q_len - mi * kTileSize);
        const int64_t cols = std::min<int64_t>(kTileSize, m.kv_len - n * kTileSize);
        const bool complete = rows == kTileSize && cols == kTileSize;
        if (cls[mi * nk + n] == kFullTile) {
          EXPECT_TRUE(complete) << "full tile past the lengths";
        }
        if (cls[mi * nk + n] != kPartialTile) {
          EXPECT_EQ(id, -1);
          continue;
        }
        ASSERT_GE(id, 0);
        ASSERT_LT(id, num_partial);
        ++id_uses[id];
        const uint32_t* tile = &m.bitmaps[static_cast<size_t>(id) * kBitmapWords];
        bool any_set = false, any_clear = false, out_of_range_set = false;
        for (int64_t r = 0; r < kTileSize; ++r) {
          for (int64_t c = 0; c < kTileSize; ++c) {
            const bool in_range = r < rows && c < cols;
            if (!in_range) out_of_range_set = out_of_range_set || bit(tile, r, c);
            if (in_range && bit(tile, r, c)) any_set = true;
            if (in_range && !bit(tile, r, c)) any_clear = true;
          }
        }
        EXPECT_FALSE(out_of_range_set) << "bit set past the lengths";
        EXPECT_TRUE(any_set) << "partial tile with nothing visible";
        // Padding counts as masked: a ragged tile may have every in-range element visible.
        EXPECT_TRUE(any_clear || !complete) << "complete partial tile with everything visible";
      }
    }
  }
  for (int uses : id_uses) EXPECT_EQ(uses, 1) << "bitmap not used exactly once";
}

// Builds, checks the shape, the structure and every element against `dense`.
inline HostBlockMask check_build(const Mask& mask, int64_t batch, int64_t heads, int64_t q_len,
                          int64_t kv_len, const Dense& dense, int64_t want_batch, int64_t want_heads) {
  SCOPED_TRACE("batch " + std::to_string(batch) + ", heads " + std::to_string(heads) + ", q_len " +
               std::to_string(q_len) + ", kv_len " + std::to_string(kv_len));
  HostBlockMask m = build_block_mask(mask, batch, heads, q_len, kv_len);
  EXPECT_EQ(m.batch, want_batch);
  EXPECT_EQ(m.heads, want_heads);
  EXPECT_EQ(m.q_len, q_len);
  EXPECT_EQ(m.kv_len, kv_len);
  check_structure(m);
  int64_t mismatches = 0;
  std::string first;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t q = 0; q < q_len; ++q) {
        for (int64_t kv = 0; kv < kv_len; ++kv) {
          if (m.visible(b, h, q, kv) == dense(b, h, q, kv)) continue;
          if (mismatches++ == 0) {
            first = "(" + std::to_string(b) + ", " + std::to_string(h) + ", " + std::to_string(q) +
                    ", " + std::to_string(kv) + ")";
          }
        }
      }
    }
  }
  EXPECT_EQ(mismatches, 0) << "first mismatch at (b, h, q, kv) = " << first;
  return m;
}

// Checks Mask::operator() against `dense` on every element of the given extent.
inline void check_operator(const Mask& mask, int64_t batch, int64_t heads, int64_t q_len,
                           int64_t kv_len, const Dense& dense) {
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t q = 0; q < q_len; ++q) {
        for (int64_t kv = 0; kv < kv_len; ++kv) {
          ASSERT_EQ(mask(b, h, q, kv), dense(b, h, q, kv)) << b << " " << h << " " << q << " " << kv;
        }
      }
    }
  }
}

}  // namespace flashflex::test
