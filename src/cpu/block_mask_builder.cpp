// build_block_mask: the CPU builder turning a Mask (src/mask/mask_node.hpp) into a
// HostBlockMask (layout in include/flashflex/block_mask.hpp). For every tile it asks the
// built-in predicates of src/mask/predicates.hpp for an analytic class; only tiles that are
// not ruled out and not provably full get their bitmap evaluated, row by row, and are then
// refined (all clear: empty; complete and all set: full), so partial tiles are exact.
#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "api/validate_limits.hpp"
#include "flashflex/error.hpp"
#include "flashflex/mask.hpp"
#include "mask/mask_node.hpp"

namespace flashflex {
namespace {

using detail::IdRange;
using detail::MaskKind;
using detail::MaskNode;
using detail::TileBox;
using detail::TileClass;

using Bitmap = std::array<uint32_t, kBitmapWords>;

constexpr int64_t kMaxExtent = std::numeric_limits<int32_t>::max();  // int32 tile lists

[[noreturn]] void invalid(const std::string& message) {
  throw Error(ErrorKind::kInvalidArgument, message);
}

std::string str(int64_t v) { return std::to_string(v); }

// ---- validation ----------------------------------------------------------------------------

void check_extent(const char* arg, int64_t value) {
  if (value < 1) {
    invalid(std::string("build_block_mask: expected ") + arg + " >= 1, got " + str(value));
  }
  if (value > kMaxExtent) {
    invalid(std::string("build_block_mask: expected ") + arg + " <= " + str(kMaxExtent) + ", got " +
            str(value));
  }
}

void check_mask_batch(const Mask& mask, int64_t batch) {
  if (mask.batch() > 0 && mask.batch() != batch) {
    invalid("build_block_mask: expected batch = " + str(mask.batch()) +
            " (the samples the mask's data describe), got " + str(batch));
  }
}

void check_document(const MaskNode& node, int64_t q_len, int64_t kv_len) {
  const int64_t batch = node.batch;  // equals the build's batch (check_mask_batch)
  const auto size_message = [&](const char* arg, const char* len_name, int64_t len, size_t got) {
    return std::string("document: expected ") + arg + " of size batch * " + len_name + " = " +
           str(batch) + " * " + str(len) + " = " + str(batch * len) + ", got " +
           str(static_cast<int64_t>(got));
  };
  if (static_cast<int64_t>(node.q_doc_ids.size()) != batch * q_len) {
    invalid(size_message("q_doc_ids", "q_len", q_len, node.q_doc_ids.size()));
  }
  if (node.kv_doc_ids.empty()) {
    if (kv_len != q_len) {
      invalid("document: expected kv_len = q_len = " + str(q_len) +
              " (kv_doc_ids is empty: the same as q_doc_ids), got " + str(kv_len));
    }
  } else if (static_cast<int64_t>(node.kv_doc_ids.size()) != batch * kv_len) {
    invalid(size_message("kv_doc_ids", "kv_len", kv_len, node.kv_doc_ids.size()));
  }
}

void check_eagle3(const MaskNode& node, int64_t q_len, int64_t kv_len) {
  const int64_t step = node.eagle3.step;
  const int64_t block_len = node.eagle3.block_len;
  if (q_len != block_len) {
    invalid("eagle3: expected q_len = block_len = " + str(block_len) + ", got " + str(q_len));
  }
  // block_len = q_len <= kMaxExtent here, so the product fits in int64 whenever step does.
  const bool product_fits = step < kMaxExtent;
  if (!product_fits || (step + 1) * block_len != kv_len) {
    const std::string product = product_fits ? " = " + str((step + 1) * block_len) : "";
    invalid("eagle3: expected kv_len = (step + 1) * block_len = (" + str(step) + " + 1) * " +
            str(block_len) + product + ", got " + str(kv_len));
  }
}

// ---- the mask tree, flattened with its build-time data -------------------------------------

struct Geometry {
  int64_t q_len, kv_len;
  int64_t num_q_tiles, num_kv_tiles;
};

struct BuildNode {
  const MaskNode* node = nullptr;
  int lhs = -1, rhs = -1;             // kAnd / kOr operands, indices into the flat tree
  std::vector<IdRange> q_tile_ids;    // document: [batch, num_q_tiles] id range of each q tile
  std::vector<IdRange> kv_tile_ids;   // document: [batch, num_kv_tiles]
};

// Id ranges of every tile of every sample: O(batch * len).
std::vector<IdRange> tile_id_ranges(const int32_t* ids, int64_t batch, int64_t len) {
  const int64_t tiles = num_tiles(len);
  std::vector<IdRange> ranges(static_cast<size_t>(batch * tiles));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t last = std::min(len, (t + 1) * kTileSize) - 1;
      ranges[b * tiles + t] = detail::id_range(ids + b * len, t * kTileSize, last);
    }
  }
  return ranges;
}

// Validates the leaves' data against the geometry and appends the subtree in pre-order.
int flatten(const MaskNode& node, const Geometry& g, std::vector<BuildNode>& tree) {
  const int index = static_cast<int>(tree.size());
  tree.emplace_back();
  tree.back().node = &node;
  if (node.kind == MaskKind::kAnd || node.kind == MaskKind::kOr) {
    const int lhs = flatten(*node.lhs, g, tree);
    const int rhs = flatten(*node.rhs, g, tree);
    tree[index].lhs = lhs;
    tree[index].rhs = rhs;
  } else if (node.kind == MaskKind::kEagle3) {
    check_eagle3(node, g.q_len, g.kv_len);
  } else if (node.kind == MaskKind::kDocument) {
    check_document(node, g.q_len, g.kv_len);
    tree[index].q_tile_ids = tile_id_ranges(node.document.q_ids, node.batch, g.q_len);
    tree[index].kv_tile_ids = tile_id_ranges(node.document.kv_ids, node.batch, g.kv_len);
  }
  return index;
}

// One tile of one (sample, head).
struct Tile {
  int64_t b, h, m, n;
  TileBox box;  // in-range rows and columns
};

class TileEvaluator {
 public:
  TileEvaluator(const std::vector<BuildNode>& tree, const Geometry& g) : tree_(tree), g_(g) {}

  TileClass classify(int i, const Tile& t) const {
    const BuildNode& bn = tree_[i];
    const MaskNode& node = *bn.node;
    switch (node.kind) {
      case MaskKind::kBand: return node.band.classify(t.b, t.box);
      case MaskKind::kDocument:
        return detail::DocumentPredicate::classify(bn.q_tile_ids[t.b * g_.num_q_tiles + t.m],
                                                   bn.kv_tile_ids[t.b * g_.num_kv_tiles + t.n]);
      case MaskKind::kPrefixLm: return node.prefix_lm.classify(t.b, t.box);
      case MaskKind::kPadding: return node.padding.classify(t.b, t.box);
      case MaskKind::kEagle3: return node.eagle3.classify(t.b, t.box);
      case MaskKind::kUser: return TileClass::kMaybe;
      case MaskKind::kAnd: {
        const TileClass lhs = classify(bn.lhs, t);
        return lhs == TileClass::kEmpty ? lhs : detail::and_class(lhs, classify(bn.rhs, t));
      }
      case MaskKind::kOr: {
        const TileClass lhs = classify(bn.lhs, t);
        return lhs == TileClass::kFull ? lhs : detail::or_class(lhs, classify(bn.rhs, t));
      }
    }
    throw Error(ErrorKind::kInternal, "build_block_mask: unknown mask node kind");
  }

  // out = the elements of `candidates` that node i makes visible. Only candidates are
  // evaluated: an AND evaluates its right side where its left side holds, an OR where it
  // does not, so a user predicate never runs where a built-in mask already decides.
  void fill(int i, const Tile& t, const Bitmap& candidates, Bitmap& out) const {
    const TileClass cls = classify(i, t);
    if (cls != TileClass::kMaybe) {
      out = cls == TileClass::kFull ? candidates : Bitmap{};
      return;
    }
    const BuildNode& bn = tree_[i];
    const MaskNode& node = *bn.node;
    switch (node.kind) {
      case MaskKind::kBand: return fill_rows(node.band, t, candidates, out);
      case MaskKind::kDocument: return fill_rows(node.document, t, candidates, out);
      case MaskKind::kPrefixLm: return fill_rows(node.prefix_lm, t, candidates, out);
      case MaskKind::kPadding: return fill_rows(node.padding, t, candidates, out);
      case MaskKind::kEagle3: return fill_rows(node.eagle3, t, candidates, out);
      case MaskKind::kUser: return fill_user(node.user, t, candidates, out);
      case MaskKind::kAnd: {
        Bitmap lhs;
        fill(bn.lhs, t, candidates, lhs);
        return fill(bn.rhs, t, lhs, out);
      }
      case MaskKind::kOr: {
        Bitmap lhs;
        fill(bn.lhs, t, candidates, lhs);
        Bitmap rest;
        for (int w = 0; w < kBitmapWords; ++w) rest[w] = candidates[w] & ~lhs[w];
        fill(bn.rhs, t, rest, out);
        for (int w = 0; w < kBitmapWords; ++w) out[w] |= lhs[w];
        return;
      }
    }
    throw Error(ErrorKind::kInternal, "build_block_mask: unknown mask node kind");
  }

 private:
  template <typename Predicate>
  static void fill_rows(const Predicate& pred, const Tile& t, const Bitmap& candidates,
                        Bitmap& out) {
    out = Bitmap{};
    for (int64_t q = t.box.q_first; q <= t.box.q_last; ++q) {
      const int r = static_cast<int>(q - t.box.q_first);
      const uint32_t* want = &candidates[r * kBitmapWordsPerRow];
      uint32_t* row = &out[r * kBitmapWordsPerRow];
      bool any = false;
      for (int w = 0; w < kBitmapWordsPerRow; ++w) any = any || want[w] != 0;
      if (!any) continue;
      pred.fill_row(t.b, q, t.box.kv_first, t.box.kv_last + 1, row);
      for (int w = 0; w < kBitmapWordsPerRow; ++w) row[w] &= want[w];
    }
  }

  static void fill_user(const Mask::Predicate& fn, const Tile& t, const Bitmap& candidates,
                        Bitmap& out) {
    out = Bitmap{};
    for (int64_t q = t.box.q_first; q <= t.box.q_last; ++q) {
      const int r = static_cast<int>(q - t.box.q_first);
      for (int64_t kv = t.box.kv_first; kv <= t.box.kv_last; ++kv) {
        const int c = static_cast<int>(kv - t.box.kv_first);
        if (detail::bitmap_bit(candidates.data(), r, c) && fn(t.b, t.h, q, kv)) {
          detail::bitmap_set(out.data(), r, c);
        }
      }
    }
  }

  const std::vector<BuildNode>& tree_;
  const Geometry& g_;
};

// The in-range elements of a tile: rows x cols bits set.
Bitmap in_range_bits(int rows, int cols) {
  Bitmap bits{};
  for (int r = 0; r < rows; ++r) detail::set_bit_span(&bits[r * kBitmapWordsPerRow], 0, cols - 1);
  return bits;
}

bool all_clear(const Bitmap& bits) {
  for (uint32_t w : bits) {
    if (w != 0) return false;
  }
  return true;
}

}  // namespace

HostBlockMask build_block_mask(const Mask& mask, int64_t batch, int64_t heads, int64_t q_len,
                               int64_t kv_len) {
  check_extent("batch", batch);
  batch = detail::broadcast_batch(mask, batch);
  check_extent("heads", heads);
  check_extent("q_len", q_len);
  check_extent("kv_len", kv_len);
  detail::check_seq_len("build_block_mask", "q_len", q_len);
  detail::check_seq_len("build_block_mask", "kv_len", kv_len);
  check_mask_batch(mask, batch);
  // Before any list is allocated: the tiles of the result (batch and heads as it broadcasts).
  detail::check_mask_tiles("build_block_mask", mask.depends_on_sample() ? batch : 1,
                           mask.depends_on_head() ? heads : 1, q_len, kv_len);
  const Geometry g{q_len, kv_len, num_tiles(q_len), num_tiles(kv_len)};
  std::vector<BuildNode> tree;
  flatten(mask.node(), g, tree);
  const TileEvaluator evaluator(tree, g);

  HostBlockMask r;
  r.batch = mask.depends_on_sample() ? batch : 1;
  r.heads = mask.depends_on_head() ? heads : 1;
  r.q_len = q_len;
  r.kv_len = kv_len;
  r.num_q_tiles = g.num_q_tiles;
  r.num_kv_tiles = g.num_kv_tiles;
  const int64_t pairs = r.batch * r.heads;
  const size_t q_rows = static_cast<size_t>(pairs * g.num_q_tiles);
  const size_t kv_cols = static_cast<size_t>(pairs * g.num_kv_tiles);
  const size_t tiles = q_rows * static_cast<size_t>(g.num_kv_tiles);
  // Count arrays start at 0, unused list entries stay 0, and no tile is partial until found.
  r.kv_num_blocks.assign(q_rows, 0);
  r.full_kv_num_blocks.assign(q_rows, 0);
  r.kv_indices.assign(tiles, 0);
  r.full_kv_indices.assign(tiles, 0);
  r.q_num_blocks.assign(kv_cols, 0);
  r.full_q_num_blocks.assign(kv_cols, 0);
  r.q_indices.assign(tiles, 0);
  r.full_q_indices.assign(tiles, 0);
  r.partial_tile_ids.assign(tiles, -1);

  const auto append = [](std::vector<int32_t>& counts, std::vector<int32_t>& indices, int64_t list,
                         int64_t list_len, int64_t value) {
    indices[list * list_len + counts[list]++] = static_cast<int32_t>(value);
  };
  Bitmap bits;
  for (int64_t b = 0; b < r.batch; ++b) {
    for (int64_t h = 0; h < r.heads; ++h) {
      const int64_t bh = b * r.heads + h;
      // m ascends in the outer loop and n in the inner one: every list is built sorted.
      for (int64_t m = 0; m < g.num_q_tiles; ++m) {
        const int64_t q_first = m * kTileSize;
        const int64_t q_last = std::min(q_len, q_first + kTileSize) - 1;
        for (int64_t n = 0; n < g.num_kv_tiles; ++n) {
          const int64_t kv_first = n * kTileSize;
          const int64_t kv_last = std::min(kv_len, kv_first + kTileSize) - 1;
          const Tile t{b, h, m, n, TileBox{q_first, q_last, kv_first, kv_last}};
          TileClass cls = evaluator.classify(0, t);
          if (cls == TileClass::kEmpty) continue;
          const int rows = static_cast<int>(q_last - q_first + 1);
          const int cols = static_cast<int>(kv_last - kv_first + 1);
          const bool complete = rows == kTileSize && cols == kTileSize;
          if (cls == TileClass::kMaybe || !complete) {
            const Bitmap candidates = in_range_bits(rows, cols);
            evaluator.fill(0, t, candidates, bits);
            // Refined: from here on kMaybe means partial, with a visible and a masked element.
            cls = all_clear(bits)                  ? TileClass::kEmpty
                  : complete && bits == candidates ? TileClass::kFull
                                                   : TileClass::kMaybe;
          }
          const int64_t row = bh * g.num_q_tiles + m;
          const int64_t col = bh * g.num_kv_tiles + n;
          if (cls == TileClass::kFull) {
            append(r.full_kv_num_blocks, r.full_kv_indices, row, g.num_kv_tiles, n);
            append(r.full_q_num_blocks, r.full_q_indices, col, g.num_q_tiles, m);
          } else if (cls == TileClass::kMaybe) {
            const int32_t id = static_cast<int32_t>(r.num_partial_tiles());
            r.partial_tile_ids[row * g.num_kv_tiles + n] = id;
            r.bitmaps.insert(r.bitmaps.end(), bits.begin(), bits.end());
            append(r.kv_num_blocks, r.kv_indices, row, g.num_kv_tiles, n);
            append(r.q_num_blocks, r.q_indices, col, g.num_q_tiles, m);
          }
        }
      }
    }
  }
  return r;
}

}  // namespace flashflex
