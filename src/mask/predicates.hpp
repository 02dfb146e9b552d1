// The built-in mask predicates, each with its analytic tile classification, written once as
// host+device code: the CPU builder (src/cpu/block_mask_builder.cpp), Mask::operator()
// (src/mask/mask.cpp) and the CUDA builder (src/cuda/mask/block_mask_kernels.cuh) all call these
// very functions.
// Each predicate is a plain struct (values and non-owning pointers, no std:: containers):
//   visible(b, q, kv)                    the predicate itself, for one element of sample b;
//   classify(b, tile)                    kEmpty / kFull when provable for every element of the
//                                        tile's in-range rows and columns, else kMaybe;
//   fill_row(b, q, kv_begin, kv_end, row) sets bit kv - kv_begin of `row` for every visible
//                                        kv in [kv_begin, kv_end), a whole bitmap row per call.
// A predicate with per-sample data (`const int64_t*` lengths) reads entry b; a null pointer
// means "no such data", so the predicate ignores b.
#pragma once

#include <cstdint>

#include "mask/bitmap.hpp"

namespace flashflex::detail {

// What is provable about a tile before looking at its elements.
enum class TileClass : uint8_t {
  kEmpty,  // no element visible
  kMaybe,  // unknown: the elements must be evaluated
  kFull,   // every in-range element visible
};

FLASHFLEX_HOST_DEVICE inline TileClass and_class(TileClass a, TileClass b) {
  if (a == TileClass::kEmpty || b == TileClass::kEmpty) return TileClass::kEmpty;
  if (a == TileClass::kFull && b == TileClass::kFull) return TileClass::kFull;
  return TileClass::kMaybe;
}

FLASHFLEX_HOST_DEVICE inline TileClass or_class(TileClass a, TileClass b) {
  if (a == TileClass::kFull || b == TileClass::kFull) return TileClass::kFull;
  if (a == TileClass::kEmpty && b == TileClass::kEmpty) return TileClass::kEmpty;
  return TileClass::kMaybe;
}

// The in-range rows and columns of one tile, inclusive (clipped to Q_LEN and KV_LEN).
struct TileBox {
  int64_t q_first, q_last;
  int64_t kv_first, kv_last;
};

FLASHFLEX_HOST_DEVICE inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
FLASHFLEX_HOST_DEVICE inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// Sets bits first..last (inclusive, 0 <= first <= last < kTileSize) of one bitmap row.
FLASHFLEX_HOST_DEVICE inline void set_bit_span(uint32_t* row, int first, int last) {
  constexpr int kBitsPerWord = 32;
  for (int w = first / kBitsPerWord; w <= last / kBitsPerWord; ++w) {
    const int lo = w == first / kBitsPerWord ? first % kBitsPerWord : 0;
    const int hi = w == last / kBitsPerWord ? last % kBitsPerWord : kBitsPerWord - 1;
    // Bits lo..hi of the word; a 64-bit shift keeps hi = 31 well defined.
    const uint64_t upto_hi = (uint64_t{1} << (hi + 1)) - 1;
    row[w] |= static_cast<uint32_t>(upto_hi & ~((uint64_t{1} << lo) - 1));
  }
}

// Sets the bits of the columns first..last (absolute, inclusive) clipped to [kv_begin, kv_end).
FLASHFLEX_HOST_DEVICE inline void set_column_span(uint32_t* row, int64_t kv_begin, int64_t kv_end,
                                                  int64_t first, int64_t last) {
  first = max64(first, kv_begin);
  last = min64(last, kv_end - 1);
  if (first <= last) {
    set_bit_span(row, static_cast<int>(first - kv_begin), static_cast<int>(last - kv_begin));
  }
}

// Diagonal band min_diff <= kv - q <= max_diff: causal (min_diff = INT64_MIN) and sliding window.
// The bounds are saturated by the factories, and kv - q never overflows for int32 lengths.
struct BandPredicate {
  int64_t min_diff;
  int64_t max_diff;

  FLASHFLEX_HOST_DEVICE bool visible(int64_t, int64_t q, int64_t kv) const {
    const int64_t diff = kv - q;
    return min_diff <= diff && diff <= max_diff;
  }

  // kv - q takes every integer value in [kv_first - q_last, kv_last - q_first] on the tile.
  FLASHFLEX_HOST_DEVICE TileClass classify(int64_t, const TileBox& t) const {
    const int64_t lowest = t.kv_first - t.q_last;
    const int64_t highest = t.kv_last - t.q_first;
    if (highest < min_diff || lowest > max_diff) return TileClass::kEmpty;
    if (lowest >= min_diff && highest <= max_diff) return TileClass::kFull;
    return TileClass::kMaybe;
  }

  FLASHFLEX_HOST_DEVICE void fill_row(int64_t, int64_t q, int64_t kv_begin, int64_t kv_end,
                                      uint32_t* row) const {
    const int64_t first_diff = max64(kv_begin - q, min_diff);
    const int64_t last_diff = min64(kv_end - 1 - q, max_diff);
    if (first_diff <= last_diff) {
      set_column_span(row, kv_begin, kv_end, q + first_diff, q + last_diff);
    }
  }
};

// Smallest and largest document id over a run of positions.
struct IdRange {
  int32_t min, max;
};

// The id range of ids[first..last] (inclusive, first <= last): one tile's summary.
FLASHFLEX_HOST_DEVICE inline IdRange id_range(const int32_t* ids, int64_t first, int64_t last) {
  IdRange r{ids[first], ids[first]};
  for (int64_t i = first + 1; i <= last; ++i) {
    r.min = ids[i] < r.min ? ids[i] : r.min;
    r.max = ids[i] > r.max ? ids[i] : r.max;
  }
  return r;
}

// q_ids[b, q] == kv_ids[b, kv]; rows of q_stride / kv_stride ids per sample. Tiles are
// classified from the id ranges of their rows and columns, which works for unsorted ids too.
struct DocumentPredicate {
  const int32_t* q_ids;
  const int32_t* kv_ids;
  int64_t q_stride;
  int64_t kv_stride;

  FLASHFLEX_HOST_DEVICE bool visible(int64_t b, int64_t q, int64_t kv) const {
    return q_ids[b * q_stride + q] == kv_ids[b * kv_stride + kv];
  }

  FLASHFLEX_HOST_DEVICE static TileClass classify(IdRange rows, IdRange cols) {
    if (rows.max < cols.min || cols.max < rows.min) return TileClass::kEmpty;
    const bool one_id = rows.min == rows.max && cols.min == cols.max && rows.min == cols.min;
    return one_id ? TileClass::kFull : TileClass::kMaybe;
  }

  FLASHFLEX_HOST_DEVICE void fill_row(int64_t b, int64_t q, int64_t kv_begin, int64_t kv_end,
                                      uint32_t* row) const {
    const int32_t id = q_ids[b * q_stride + q];
    const int32_t* kv_row = kv_ids + b * kv_stride;
    for (int64_t kv = kv_begin; kv < kv_end; ++kv) {
      if (kv_row[kv] == id) bitmap_set(row, 0, static_cast<int>(kv - kv_begin));
    }
  }
};

// Prefix-LM: kv < prefix_lengths[b] or kv <= q, i.e. kv <= max(prefix_lengths[b] - 1, q).
struct PrefixLmPredicate {
  const int64_t* prefix_lengths;

  FLASHFLEX_HOST_DEVICE bool visible(int64_t b, int64_t q, int64_t kv) const {
    return kv < prefix_lengths[b] || kv <= q;
  }

  FLASHFLEX_HOST_DEVICE TileClass classify(int64_t b, const TileBox& t) const {
    const int64_t prefix = prefix_lengths[b];
    if (t.kv_first >= prefix && t.kv_first > t.q_last) return TileClass::kEmpty;
    if (t.kv_last < prefix || t.kv_last <= t.q_first) return TileClass::kFull;
    return TileClass::kMaybe;
  }

  FLASHFLEX_HOST_DEVICE void fill_row(int64_t b, int64_t q, int64_t kv_begin, int64_t kv_end,
                                      uint32_t* row) const {
    set_column_span(row, kv_begin, kv_end, kv_begin, max64(prefix_lengths[b] - 1, q));
  }
};

// q < q_lengths[b] and kv < kv_lengths[b]; a null array puts no limit on its side.
struct PaddingPredicate {
  const int64_t* q_lengths;
  const int64_t* kv_lengths;

  FLASHFLEX_HOST_DEVICE bool visible(int64_t b, int64_t q, int64_t kv) const {
    return (!q_lengths || q < q_lengths[b]) && (!kv_lengths || kv < kv_lengths[b]);
  }

  FLASHFLEX_HOST_DEVICE static TileClass classify_side(const int64_t* lengths, int64_t b,
                                                       int64_t first, int64_t last) {
    if (!lengths || last < lengths[b]) return TileClass::kFull;
    return first >= lengths[b] ? TileClass::kEmpty : TileClass::kMaybe;
  }

  FLASHFLEX_HOST_DEVICE TileClass classify(int64_t b, const TileBox& t) const {
    return and_class(classify_side(q_lengths, b, t.q_first, t.q_last),
                     classify_side(kv_lengths, b, t.kv_first, t.kv_last));
  }

  FLASHFLEX_HOST_DEVICE void fill_row(int64_t b, int64_t q, int64_t kv_begin, int64_t kv_end,
                                      uint32_t* row) const {
    if (q_lengths && q >= q_lengths[b]) return;
    const int64_t kv_last = kv_lengths ? kv_lengths[b] - 1 : kv_end - 1;
    set_column_span(row, kv_begin, kv_end, kv_begin, kv_last);
  }
};

// EAGLE3 test-time training, step `step`: keys are step + 1 blocks of block_len columns.
// Row q of sample b sees column c iff q < L_b - step and either c < block_len and c <= q
// (causal in block 0) or c = j * block_len + q for some 1 <= j <= step (one diagonal key in
// each later block). L_b = lengths[b], or block_len when lengths is null.
struct Eagle3Predicate {
  int64_t step;
  int64_t block_len;
  const int64_t* lengths;

  FLASHFLEX_HOST_DEVICE int64_t valid_rows(int64_t b) const {
    return (lengths ? lengths[b] : block_len) - step;
  }

  FLASHFLEX_HOST_DEVICE bool visible(int64_t b, int64_t q, int64_t c) const {
    if (q >= valid_rows(b)) return false;
    const int64_t diff = c - q;
    const bool diagonal = diff >= block_len && diff % block_len == 0 && diff / block_len <= step;
    return (c < block_len && c <= q) || diagonal;
  }

  // A kv tile may straddle blocks (block_len need not be a multiple of kTileSize): each
  // block's segment of the tile is classified alone; the tile is full iff every segment is,
  // empty iff every segment is.
  FLASHFLEX_HOST_DEVICE TileClass classify(int64_t b, const TileBox& t) const {
    const int64_t rows_end = valid_rows(b);
    if (t.q_first >= rows_end) return TileClass::kEmpty;
    const TileClass rows = t.q_last < rows_end ? TileClass::kFull : TileClass::kMaybe;
    bool all_full = true;
    bool all_empty = true;
    for (int64_t j = t.kv_first / block_len; j <= t.kv_last / block_len; ++j) {
      const int64_t first = max64(t.kv_first, j * block_len) - j * block_len;  // block-local
      const int64_t last = min64(t.kv_last, (j + 1) * block_len - 1) - j * block_len;
      const TileBox segment_box{t.q_first, t.q_last, first, last};
      TileClass segment = TileClass::kEmpty;  // columns past the last block
      if (j == 0) {
        segment = BandPredicate{INT64_MIN, 0}.classify(b, segment_box);  // causal: c <= q
      } else if (j <= step) {
        segment = BandPredicate{0, 0}.classify(b, segment_box);  // diagonal: c - j T = q
      }
      all_full = all_full && segment == TileClass::kFull;
      all_empty = all_empty && segment == TileClass::kEmpty;
    }
    const TileClass cols = all_empty ? TileClass::kEmpty
                           : all_full ? TileClass::kFull
                                      : TileClass::kMaybe;
    return and_class(rows, cols);
  }

  FLASHFLEX_HOST_DEVICE void fill_row(int64_t b, int64_t q, int64_t kv_begin, int64_t kv_end,
                                      uint32_t* row) const {
    if (q >= valid_rows(b)) return;
    set_column_span(row, kv_begin, kv_end, kv_begin, min64(q, block_len - 1));
    // The first block j >= 1 whose diagonal key j * block_len + q may be >= kv_begin.
    const int64_t ahead = kv_begin - q;
    int64_t j = ahead > block_len ? (ahead + block_len - 1) / block_len : 1;
    for (; j <= step && j * block_len + q < kv_end; ++j) {
      set_column_span(row, kv_begin, kv_end, j * block_len + q, j * block_len + q);
    }
  }
};

}  // namespace flashflex::detail
