// Host side of the GPU block-mask builder: validation, the postfix program of the mask tree,
// the placement of per-sample data and the partial-tile capacity. Plain C++ (no CUDA): built in
// every configuration, so the plan math is tested on machines without a GPU.
//
// Capacity: an upper bound on the partial tiles of the CPU builder's result, per leaf, summed
// over the samples of the build. A partial tile of a complete tile is one that an edge of the
// visible region crosses; an incomplete tile (past Q_LEN or KV_LEN) is partial whenever anything
// in it is visible. With Mq x N tiles per sample and "ragged" meaning a length not a multiple of
// kTileSize:
//   band (causal, sliding_window)  Mq * min(N, e + kv_ragged) + q_ragged * N, where e counts the
//                                  tiles of one q-tile row crossed by the band's edges: 1 or 2
//                                  per finite edge (1 when the edge is tile-aligned: causal);
//   prefix_lm                      Mq * min(N, 2 + kv_ragged) + q_ragged * N  (diagonal + the
//                                  column of tiles holding the prefix end);
//   padding                        N per bounded q side + Mq per bounded kv side, + q_ragged * N
//                                  + kv_ragged * Mq (one row / column of tiles per boundary);
//   eagle3                         Mq * min(N, 2 + 2 * step) + N + q_ragged * N (causal edge of
//                                  block 0 and each diagonal cross <= 2 tiles of a row; the row
//                                  of tiles holding L_b - step is all partial);
//   document                       counted from the ids themselves: the tiles whose row and
//                                  column id ranges leave the class undecided (or incomplete);
//   a & b, a | b                   bound(a) + bound(b): both exact classes full or empty on a
//                                  tile make the combination full or empty there;
// everything capped at the grid. The plan is made for one Mask, whose data it has read.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "cuda/mask/block_mask_device.hpp"
#include "cuda/mask/block_mask_program.hpp"
#include "flashflex/error.hpp"
#include "mask/mask_node.hpp"

namespace flashflex::cuda {
namespace {

using detail::IdRange;
using detail::MaskKind;
using detail::MaskNode;
using detail::TileClass;

constexpr int64_t kMaxExtent = std::numeric_limits<int32_t>::max();  // int32 tile lists
constexpr const char* kWho = "build_block_mask_cuda";

[[noreturn]] void invalid(const std::string& message) { throw Error(ErrorKind::kInvalidArgument, message); }
[[noreturn]] void unsupported(const std::string& message) { throw Error(ErrorKind::kUnsupported, message); }

std::string str(int64_t v) { return std::to_string(v); }

void check_extent(const char* arg, int64_t value) {
  if (value < 1) invalid(std::string(kWho) + ": expected " + arg + " >= 1, got " + str(value));
  if (value > kMaxExtent) {
    invalid(std::string(kWho) + ": expected " + arg + " <= " + str(kMaxExtent) + ", got " + str(value));
  }
}

int count_nodes(const MaskNode& node) {
  if (node.kind == MaskKind::kAnd || node.kind == MaskKind::kOr) {
    return 1 + count_nodes(*node.lhs) + count_nodes(*node.rhs);
  }
  return 1;
}

struct Geometry {
  int64_t batch;  // samples of the build (the BlockMask's batch)
  int64_t q_len, kv_len, mq, n;
  bool q_ragged, kv_ragged;
  int64_t grid() const { return batch * mq * n; }
};

// Tile columns of one complete q-tile row crossed by the band edge at kv - q = edge: the
// kv_first (a multiple of kTileSize) in a window of 2 * kTileSize - 2 values starting at
// edge + q_first - (kTileSize - 1 or - 2); q_first is a multiple of kTileSize, so only the
// edge's residue matters. Edges beyond any reachable kv - q (saturated bounds) cross nothing.
int64_t edge_tiles(int64_t edge, bool lower) {
  constexpr int64_t kUnreachable = int64_t{1} << 40;
  if (edge <= -kUnreachable || edge >= kUnreachable) return 0;
  const int64_t start = edge - (lower ? kTileSize - 1 : kTileSize - 2);
  const int64_t first = ((start % kTileSize) + kTileSize) % kTileSize;  // start mod kTileSize
  const int64_t last = first + 2 * kTileSize - 3;
  return last / kTileSize - (first == 0 ? -1 : (first - 1) / kTileSize);
}

int64_t band_bound(const detail::BandPredicate& band, const Geometry& g) {
  const int64_t per_row = edge_tiles(band.min_diff, true) + edge_tiles(band.max_diff, false) + g.kv_ragged;
  return g.batch * (g.mq * std::min(g.n, per_row) + (g.q_ragged ? g.n : 0));
}

// Id range of every tile of every sample (ids: [batch, len]).
std::vector<IdRange> tile_ranges(const int32_t* ids, int64_t batch, int64_t len) {
  const int64_t tiles = num_tiles(len);
  std::vector<IdRange> ranges(static_cast<size_t>(batch * tiles));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < tiles; ++t) {
      ranges[b * tiles + t] = detail::id_range(ids + b * len, t * kTileSize, std::min(len, (t + 1) * kTileSize) - 1);
    }
  }
  return ranges;
}

// Tiles whose class is undecided by the id ranges, or decided full but incomplete.
int64_t document_bound(const MaskNode& node, const Geometry& g) {
  const std::vector<IdRange> rows = tile_ranges(node.document.q_ids, g.batch, g.q_len);
  const std::vector<IdRange> cols = tile_ranges(node.document.kv_ids, g.batch, g.kv_len);
  int64_t count = 0;
  for (int64_t b = 0; b < g.batch; ++b) {
    for (int64_t m = 0; m < g.mq; ++m) {
      const bool row_incomplete = g.q_ragged && m == g.mq - 1;
      for (int64_t n = 0; n < g.n; ++n) {
        const TileClass cls = detail::DocumentPredicate::classify(rows[b * g.mq + m], cols[b * g.n + n]);
        const bool incomplete = row_incomplete || (g.kv_ragged && n == g.n - 1);
        count += cls == TileClass::kMaybe || (cls == TileClass::kFull && incomplete);
      }
    }
  }
  return count;
}

void check_document(const MaskNode& node, const Geometry& g) {
  const int64_t batch = node.batch;
  const auto size_message = [&](const char* arg, const char* len_name, int64_t len, size_t got) {
    return std::string("document: expected ") + arg + " of size batch * " + len_name + " = " + str(batch) + " * " +
           str(len) + " = " + str(batch * len) + ", got " + str(static_cast<int64_t>(got));
  };
  if (static_cast<int64_t>(node.q_doc_ids.size()) != batch * g.q_len) {
    invalid(size_message("q_doc_ids", "q_len", g.q_len, node.q_doc_ids.size()));
  }
  if (node.kv_doc_ids.empty()) {
    if (g.kv_len != g.q_len) {
      invalid("document: expected kv_len = q_len = " + str(g.q_len) +
              " (kv_doc_ids is empty: the same as q_doc_ids), got " + str(g.kv_len));
    }
  } else if (static_cast<int64_t>(node.kv_doc_ids.size()) != batch * g.kv_len) {
    invalid(size_message("kv_doc_ids", "kv_len", g.kv_len, node.kv_doc_ids.size()));
  }
}

void check_eagle3(const MaskNode& node, const Geometry& g) {
  const int64_t step = node.eagle3.step;
  const int64_t block_len = node.eagle3.block_len;
  if (g.q_len != block_len) invalid("eagle3: expected q_len = block_len = " + str(block_len) + ", got " + str(g.q_len));
  const bool product_fits = step < kMaxExtent;
  if (!product_fits || (step + 1) * block_len != g.kv_len) {
    const std::string product = product_fits ? " = " + str((step + 1) * block_len) : "";
    invalid("eagle3: expected kv_len = (step + 1) * block_len = (" + str(step) + " + 1) * " + str(block_len) +
            product + ", got " + str(g.kv_len));
  }
}

// Appends the postfix program of `node`, placing its data after `cursor`.
class Flattener {
 public:
  Flattener(const Geometry& g, std::size_t data_offset, void* buffer, bool with_bound, DeviceMaskSetup& out)
      : g_(g), cursor_(data_offset), first_(data_offset), buffer_(reinterpret_cast<std::uintptr_t>(buffer)),
        with_bound_(with_bound), out_(out) {}

  // Returns the node's bound on partial tiles.
  int64_t add(const MaskNode& node) {
    int64_t bound = 0;
    MaskOp op{};
    switch (node.kind) {
      case MaskKind::kAnd:
      case MaskKind::kOr:
        bound = add(*node.lhs) + add(*node.rhs);
        op.kind = node.kind == MaskKind::kAnd ? MaskOpKind::kAnd : MaskOpKind::kOr;
        break;
      case MaskKind::kBand:
        op.kind = MaskOpKind::kBand;
        op.band = node.band;
        bound = band_bound(node.band, g_);
        break;
      case MaskKind::kDocument: {
        check_document(node, g_);
        op.kind = MaskOpKind::kDocument;
        const bool self = node.kv_doc_ids.empty();
        const std::size_t q_ids = upload(node.q_doc_ids.data(), node.q_doc_ids.size() * sizeof(int32_t));
        const std::size_t kv_ids =
            self ? q_ids : upload(node.kv_doc_ids.data(), node.kv_doc_ids.size() * sizeof(int32_t));
        const std::size_t q_ranges = reserve(g_.batch * g_.mq * sizeof(IdRange));
        out_.range_jobs.push_back(RangeJob{q_ids, q_ranges, g_.batch, g_.q_len});
        std::size_t kv_ranges = q_ranges;  // self-attention: kv_len = q_len, the same ranges
        if (!self) {
          kv_ranges = reserve(g_.batch * g_.n * sizeof(IdRange));
          out_.range_jobs.push_back(RangeJob{kv_ids, kv_ranges, g_.batch, g_.kv_len});
        }
        op.document.predicate = detail::DocumentPredicate{pointer<int32_t>(q_ids), pointer<int32_t>(kv_ids),
                                                          g_.q_len, g_.kv_len};
        op.document.q_tile_ids = pointer<IdRange>(q_ranges);
        op.document.kv_tile_ids = pointer<IdRange>(kv_ranges);
        bound = with_bound_ ? document_bound(node, g_) : 0;
        break;
      }
      case MaskKind::kPrefixLm:
        op.kind = MaskOpKind::kPrefixLm;
        op.prefix_lm = detail::PrefixLmPredicate{lengths(node.prefix_lengths)};
        bound = g_.batch * (g_.mq * std::min<int64_t>(g_.n, 2 + g_.kv_ragged) + (g_.q_ragged ? g_.n : 0));
        break;
      case MaskKind::kPadding:
        op.kind = MaskOpKind::kPadding;
        op.padding = detail::PaddingPredicate{lengths(node.q_lengths), lengths(node.kv_lengths)};
        bound = g_.batch * ((node.q_lengths.empty() ? 0 : g_.n) + (node.kv_lengths.empty() ? 0 : g_.mq) +
                            (g_.q_ragged ? g_.n : 0) + (g_.kv_ragged ? g_.mq : 0));
        break;
      case MaskKind::kEagle3:
        check_eagle3(node, g_);
        op.kind = MaskOpKind::kEagle3;
        op.eagle3 = detail::Eagle3Predicate{node.eagle3.step, node.eagle3.block_len, lengths(node.sample_lengths)};
        bound = g_.batch * (g_.mq * std::min(g_.n, 2 + 2 * node.eagle3.step) + g_.n + (g_.q_ragged ? g_.n : 0));
        break;
      case MaskKind::kUser:
        unsupported(std::string(kWho) + ": mask: expected built-in masks only (causal, sliding_window, document, "
                    "prefix_lm, padding, eagle3 and their & / |), got a user predicate, which has no GPU builder; "
                    "build it with build_block_mask on the CPU");
    }
    out_.program.ops[out_.program.num_ops++] = op;
    return std::min(bound, g_.grid());
  }

  std::size_t data_bytes() const { return cursor_ - first_; }

 private:
  std::size_t reserve(std::size_t bytes) {
    const std::size_t at = cursor_;
    cursor_ = align_up(cursor_ + bytes);
    return at;
  }
  std::size_t upload(const void* host, std::size_t bytes) {
    const std::size_t at = reserve(bytes);
    out_.uploads.push_back(HostUpload{host, bytes, at});
    return at;
  }
  // A per-sample int64 array in the buffer, or null for "no such data".
  const int64_t* lengths(const std::vector<int64_t>& v) {
    if (v.empty()) return nullptr;
    return pointer<int64_t>(upload(v.data(), v.size() * sizeof(int64_t)));
  }
  template <typename T>
  const T* pointer(std::size_t offset) const {
    return reinterpret_cast<const T*>(buffer_ + offset);
  }

  const Geometry& g_;
  std::size_t cursor_;
  std::size_t first_;
  std::uintptr_t buffer_;
  bool with_bound_;
  DeviceMaskSetup& out_;
};

int64_t effective_batch(const Mask& mask, int64_t batch) { return mask.depends_on_sample() ? batch : 1; }

}  // namespace

DeviceMaskSetup setup_device_mask(const Mask& mask, int64_t batch, int64_t q_len, int64_t kv_len,
                                  std::size_t data_offset, void* buffer, bool with_bound) {
  const int nodes = count_nodes(mask.node());
  if (nodes > kMaxMaskNodes) {
    unsupported(std::string(kWho) + ": mask: expected at most " + str(kMaxMaskNodes) +
                " nodes (leaves and & / | operators) for the GPU builder, got " + str(nodes));
  }
  const Geometry g{batch, q_len, kv_len, num_tiles(q_len), num_tiles(kv_len), q_len % kTileSize != 0,
                   kv_len % kTileSize != 0};
  DeviceMaskSetup setup;
  Flattener flattener(g, data_offset, buffer, with_bound, setup);
  setup.partial_bound = flattener.add(mask.node());
  setup.sample_data_bytes = flattener.data_bytes();
  return setup;
}

DeviceBlockMaskPlan plan_device_block_mask(const Mask& mask, int64_t batch, int64_t heads, int64_t q_len,
                                           int64_t kv_len) {
  check_extent("batch", batch);
  check_extent("heads", heads);
  check_extent("q_len", q_len);
  check_extent("kv_len", kv_len);
  if (mask.batch() > 0 && mask.batch() != batch) {
    invalid(std::string(kWho) + ": expected batch = " + str(mask.batch()) +
            " (the samples the mask's data describe), got " + str(batch));
  }
  DeviceBlockMaskPlan p;
  p.batch = effective_batch(mask, batch);
  p.heads = 1;
  p.q_len = q_len;
  p.kv_len = kv_len;
  p.num_q_tiles = num_tiles(q_len);
  p.num_kv_tiles = num_tiles(kv_len);
  p.num_nodes = count_nodes(mask.node());

  const std::size_t rows = static_cast<std::size_t>(p.batch * p.num_q_tiles);
  const std::size_t cols = static_cast<std::size_t>(p.batch * p.num_kv_tiles);
  const std::size_t tiles = rows * static_cast<std::size_t>(p.num_kv_tiles);
  std::size_t cursor = 0;
  const auto take = [&cursor](std::size_t bytes) {
    const std::size_t at = cursor;
    cursor = align_up(cursor + bytes);
    return at;
  };
  constexpr std::size_t i32 = sizeof(int32_t);
  DeviceBlockMaskOffsets& o = p.offsets;
  o.kv_num_blocks = take(rows * i32);
  o.kv_indices = take(tiles * i32);
  o.full_kv_num_blocks = take(rows * i32);
  o.full_kv_indices = take(tiles * i32);
  o.q_num_blocks = take(cols * i32);
  o.q_indices = take(tiles * i32);
  o.full_q_num_blocks = take(cols * i32);
  o.full_q_indices = take(tiles * i32);
  o.partial_tile_ids = take(tiles * i32);
  o.tile_states = take(tiles);
  o.row_partials = take(rows * i32);
  o.row_offsets = take(rows * i32);
  o.counters = take(2 * i32);
  o.partial_count = o.counters + i32;
  o.sample_data = cursor;
  const DeviceMaskSetup setup = setup_device_mask(mask, p.batch, q_len, kv_len, o.sample_data, nullptr, true);
  p.sample_data_bytes = setup.sample_data_bytes;
  cursor += setup.sample_data_bytes;
  if (setup.partial_bound > kMaxExtent) {
    unsupported(std::string(kWho) + ": expected at most " + str(kMaxExtent) +
                " partial tiles (int32 ids), the bound of this mask is " + str(setup.partial_bound));
  }
  p.partial_capacity = setup.partial_bound;
  o.bitmaps = take(static_cast<std::size_t>(p.partial_capacity) * kBitmapWords * sizeof(uint32_t));
  p.bytes = cursor;
  return p;
}

BlockMask device_block_mask_view(const DeviceBlockMaskPlan& p, void* buffer, int device_index) {
  const auto base = reinterpret_cast<std::uintptr_t>(buffer);
  const auto i32 = [base](std::size_t offset) { return reinterpret_cast<const int32_t*>(base + offset); };
  const DeviceBlockMaskOffsets& o = p.offsets;
  BlockMask m;
  m.batch = p.batch;
  m.heads = p.heads;
  m.q_len = p.q_len;
  m.kv_len = p.kv_len;
  m.num_q_tiles = p.num_q_tiles;
  m.num_kv_tiles = p.num_kv_tiles;
  m.num_partial_tiles = p.partial_capacity;
  m.device = Device{DeviceType::kCuda, device_index};
  m.kv_num_blocks = i32(o.kv_num_blocks);
  m.kv_indices = i32(o.kv_indices);
  m.full_kv_num_blocks = i32(o.full_kv_num_blocks);
  m.full_kv_indices = i32(o.full_kv_indices);
  m.q_num_blocks = i32(o.q_num_blocks);
  m.q_indices = i32(o.q_indices);
  m.full_q_num_blocks = i32(o.full_q_num_blocks);
  m.full_q_indices = i32(o.full_q_indices);
  m.partial_tile_ids = i32(o.partial_tile_ids);
  m.bitmaps = reinterpret_cast<const uint32_t*>(base + o.bitmaps);
  return m;
}

}  // namespace flashflex::cuda
