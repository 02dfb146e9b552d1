// Scores of one query row in the CPU reference: the visible kv tiles of the row read from the
// BlockMask's kv-direction lists (as the kernels iterate them), s = scale * q.k on those tiles,
// the score mod and its derivative, then the partial tiles' bitmaps. Shared by
// reference_forward.cpp and reference_backward.cpp; input buffers come from strided_io.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/element_io.hpp"
#include "cpu/strided_io.hpp"
#include "flashflex/block_mask.hpp"
#include "flashflex/mods.hpp"
#include "mask/bitmap.hpp"

namespace flashflex::cpu {

// The score of a hidden column. A visible column whose bias is -inf scores the same and is
// treated the same: probability 0, no gradient.
inline constexpr double kMaskedScore = -std::numeric_limits<double>::infinity();

// Columns [begin, end) of one visible kv tile; `bitmap` (the tile's kBitmapWords words) is null
// for a full tile, whose columns are all visible.
struct KvSpan {
  int64_t begin = 0;
  int64_t end = 0;
  const uint32_t* bitmap = nullptr;
};

// The visible kv tiles of q-tile `q_tile` for sample b, query head h, in ascending column order
// so that every sum over a row runs in the same order whether a tile is full or partial.
// Only the tiles named by the full and partial lists are visited; columns past kv_len never are.
inline void visible_kv_spans(const BlockMask* mask, int64_t b, int64_t h, int64_t q_tile, int64_t kv_len,
                             std::vector<KvSpan>& spans) {
  spans.clear();
  if (mask == nullptr) {
    spans.push_back({0, kv_len, nullptr});
    return;
  }
  const int64_t bh = (mask->batch == 1 ? 0 : b) * mask->heads + (mask->heads == 1 ? 0 : h);
  const int64_t row = bh * mask->num_q_tiles + q_tile;
  const int64_t list_offset = row * mask->num_kv_tiles;
  const int64_t end_column = std::min(kv_len, mask->kv_len);
  auto add_tile = [&](int64_t n, const uint32_t* bitmap) {
    const int64_t begin = n * kTileSize;
    const int64_t end = std::min(begin + kTileSize, end_column);
    if (begin < end) spans.push_back({begin, end, bitmap});
  };
  for (int32_t i = 0; i < mask->full_kv_num_blocks[row]; ++i) {
    add_tile(mask->full_kv_indices[list_offset + i], nullptr);
  }
  for (int32_t i = 0; i < mask->kv_num_blocks[row]; ++i) {
    const int64_t n = mask->kv_indices[list_offset + i];
    const int64_t id = mask->partial_tile_ids[list_offset + n];
    add_tile(n, mask->bitmaps + id * kBitmapWords);
  }
  std::sort(spans.begin(), spans.end(), [](const KvSpan& a, const KvSpan& c) { return a.begin < c.begin; });
}

// The score mod of one (sample, query head), resolved once per head.
struct HeadScoreMod {
  ScoreModKind kind = ScoreModKind::kNone;
  double softcap = 0.0;
  double alibi_slope = 0.0;
  const TensorRef* bias = nullptr;  // kBias: read at (bias_b, bias_h, row, column)
  int64_t bias_b = 0;
  int64_t bias_h = 0;
};

inline HeadScoreMod resolve_head_score_mod(const ScoreMod& mod, int64_t b, int64_t h) {
  HeadScoreMod r;
  r.kind = mod.kind;
  r.softcap = mod.softcap;
  if (mod.kind == ScoreModKind::kAlibi) {
    const TensorRef& slopes = mod.alibi_slopes;
    r.alibi_slope = static_cast<const float*>(slopes.data)[h * slopes.strides[0]];
  }
  if (mod.kind == ScoreModKind::kBias) {
    r.bias = &mod.bias;
    r.bias_b = mod.bias.sizes[0] == 1 ? 0 : b;  // size-1 dims broadcast
    r.bias_h = mod.bias.sizes[1] == 1 ? 0 : h;
  }
  return r;
}

// Scores of query row `row` against the columns of `spans`:
//   s[j]    = mod(scale * q_row . k_j), or kMaskedScore where the bitmap hides column j,
//   dmod[j] = d mod / d s_raw at s_raw = scale * q_row . k_j (skipped when dmod is null).
// kt is K transposed (head_dim x kv_len, from gather_matrix_transposed); s and dmod have kv_len
// entries, of which only the spans' columns are written.
inline void score_row(const double* q_row, const double* kt, int64_t kv_len, int64_t head_dim, double scale,
                      const HeadScoreMod& mod, int64_t row, const std::vector<KvSpan>& spans, double* s,
                      double* dmod) {
  for (const KvSpan& span : spans) {
    const int64_t begin = span.begin, end = span.end;
    std::fill(s + begin, s + end, 0.0);
    for (int64_t d = 0; d < head_dim; ++d) {
      const double q_d = q_row[d];
      const double* kt_d = kt + d * kv_len;
      for (int64_t j = begin; j < end; ++j) s[j] += q_d * kt_d[j];
    }
    for (int64_t j = begin; j < end; ++j) s[j] *= scale;
    switch (mod.kind) {
      case ScoreModKind::kNone:
        if (dmod) std::fill(dmod + begin, dmod + end, 1.0);
        break;
      case ScoreModKind::kSoftcap:
        for (int64_t j = begin; j < end; ++j) {
          const double t = std::tanh(s[j] / mod.softcap);
          s[j] = mod.softcap * t;
          if (dmod) dmod[j] = 1.0 - t * t;
        }
        break;
      case ScoreModKind::kAlibi:
        for (int64_t j = begin; j < end; ++j) s[j] += mod.alibi_slope * static_cast<double>(j - row);
        if (dmod) std::fill(dmod + begin, dmod + end, 1.0);
        break;
      case ScoreModKind::kBias: {
        const TensorRef& bias = *mod.bias;
        const int64_t row_offset = offset_of(bias, mod.bias_b, mod.bias_h, row, 0);
        with_dtype(bias.dtype, [&](auto dtype) {
          for (int64_t j = begin; j < end; ++j) {
            s[j] += load_as_double<decltype(dtype)::value>(bias.data, row_offset + j * bias.strides[3]);
          }
        });
        if (dmod) std::fill(dmod + begin, dmod + end, 1.0);
        break;
      }
      case ScoreModKind::kLinked:  // CUDA tensors only (validate.cpp): never reaches the reference
        break;
    }
    if (span.bitmap != nullptr) {
      const int tile_row = static_cast<int>(row % kTileSize);
      for (int64_t j = begin; j < end; ++j) {
        if (!detail::bitmap_bit(span.bitmap, tile_row, static_cast<int>(j - begin))) s[j] = kMaskedScore;
      }
    }
  }
}

// Softmax statistics of a scored row: max m and l = sum of exp(s - m) over the visible columns.
// A row with no visible column has m = -inf and l = 0. A NaN score makes m NaN (std::max would
// skip it and a NaN-only row would pass for a fully masked one): the row's out and lse are then
// NaN, as a dense computation gives, so a diverging run reaches the loss as NaN.
struct RowStats {
  double max = kMaskedScore;
  double sum = 0.0;
  bool empty() const { return max == kMaskedScore; }
  double lse() const { return empty() ? kMaskedScore : max + std::log(sum); }
};

// Writes p[j] = exp(s[j] - m) (0 for masked columns) over the spans' columns and returns (m, l);
// p is left unwritten for an empty row, which callers skip.
inline RowStats exp_row(const double* s, const std::vector<KvSpan>& spans, double* p) {
  RowStats r;
  for (const KvSpan& span : spans) {
    for (int64_t j = span.begin; j < span.end; ++j) {
      if (s[j] > r.max || std::isnan(s[j])) r.max = s[j];  // once NaN, no comparison is true
    }
  }
  if (r.empty()) return r;
  for (const KvSpan& span : spans) {
    for (int64_t j = span.begin; j < span.end; ++j) {
      p[j] = s[j] == kMaskedScore ? 0.0 : std::exp(s[j] - r.max);
      r.sum += p[j];
    }
  }
  return r;
}

}  // namespace flashflex::cpu
