// Kernels of the GPU block-mask builder (host side: block_mask_device.cu). The schedule:
//   tile_id_ranges_kernel  (document masks only) the id range of every tile, a warp per tile;
//   classify_rows_kernel   a CTA per q-tile row: classify every tile of the row with the
//                          predicates' analytic classification, refine the undecided and the
//                          incomplete tiles exactly as the CPU builder does (all the chunk's
//                          undecided tiles at once: boxes of kSubRows rows classified first, a
//                          thread per box, then the rows of the boxes still undecided, a thread
//                          per row), write the row's kv lists, tile states and partial count;
//                          the last CTA to finish scans the partial counts of all rows into each
//                          row's first partial id;
//   finish_kernel          CTAs over the partial ids write one bitmap per 128 threads (the row
//                          of an id found by binary search over the rows' first ids), a warp per
//                          kv-tile column writes the column's q lists.
// Partial ids follow the CPU builder's order: row-major over (b, m), ascending n in a row.
#pragma once

#include <cub/block/block_scan.cuh>

#include <cstdint>

#include "cuda/mask/block_mask_program.hpp"

namespace flashflex::cuda::mask_kernels {

using detail::IdRange;
using detail::TileBox;
using detail::TileClass;

inline constexpr int kThreads = 512;
inline constexpr int kTilesPerPass = kThreads / kTileSize;  // bitmaps written at once by a CTA
inline constexpr int kScanItems = 4;                        // row counts per thread in the last CTA's scan
// Refinement of undecided tiles: each tile's rows are first classified in kSubBoxes boxes of
// kSubRows rows (a thread per box), then the rows of the boxes left undecided (a thread per row).
inline constexpr int kSubRows = 8;
inline constexpr int kSubBoxes = kTileSize / kSubRows;
static_assert(kTileSize % kSubRows == 0, "sub-boxes split a tile");
static_assert(kThreads * kSubBoxes <= 65536, "open sub-box list entries are uint16");
inline constexpr int kColumnsPerCta = kThreads / 32;  // finish_kernel: a warp per kv-tile column

// What a tile is, in the row kernel and in tile_states for the column CTAs.
enum : uint8_t { kStateEmpty = 0, kStatePartial = 1, kStateFull = 2, kStateCheck = 3 };

// Partial and full counts scanned together: 16 bits each (a CTA sees at most kThreads tiles).
inline constexpr int kFullShift = 16;
static_assert(kThreads < (1 << kFullShift), "packed counts overflow");

struct BuildParams {
  MaskProgram program;
  int64_t q_len, kv_len;
  int64_t mq, n;      // tiles per column / row
  int64_t rows;       // batch * mq
  int64_t capacity;   // bitmaps reserved
  int32_t* kv_num_blocks;
  int32_t* kv_indices;
  int32_t* full_kv_num_blocks;
  int32_t* full_kv_indices;
  int32_t* q_num_blocks;
  int32_t* q_indices;
  int32_t* full_q_num_blocks;
  int32_t* full_q_indices;
  int32_t* partial_tile_ids;
  uint32_t* bitmaps;
  uint8_t* tile_states;
  int32_t* row_partials;
  int32_t* row_offsets;
  int32_t* counters;  // [0] rows finished, [1] partial tiles in all
};

__device__ inline TileBox tile_box(const BuildParams& p, int64_t m, int64_t n) {
  const int64_t q_first = m * kTileSize;
  const int64_t kv_first = n * kTileSize;
  return TileBox{q_first, detail::min64(p.q_len, q_first + kTileSize) - 1, kv_first,
                 detail::min64(p.kv_len, kv_first + kTileSize) - 1};
}

__device__ inline bool complete(const TileBox& t) {
  return t.q_last - t.q_first + 1 == kTileSize && t.kv_last - t.kv_first + 1 == kTileSize;
}

// The analytic class of leaf `op` on `box` (inside tile (m, n) of sample b).
__device__ inline TileClass classify_leaf(const BuildParams& p, const MaskOp& op, int64_t b, int64_t m, int64_t n,
                                          const TileBox& box) {
  switch (op.kind) {
    case MaskOpKind::kBand: return op.band.classify(b, box);
    case MaskOpKind::kDocument:
      return detail::DocumentPredicate::classify(op.document.q_tile_ids[b * p.mq + m],
                                                 op.document.kv_tile_ids[b * p.n + n]);
    case MaskOpKind::kPrefixLm: return op.prefix_lm.classify(b, box);
    case MaskOpKind::kPadding: return op.padding.classify(b, box);
    case MaskOpKind::kEagle3: return op.eagle3.classify(b, box);
    default: return TileClass::kMaybe;
  }
}

// The analytic class of `box` (tile (m, n) of sample b or a part of it): the program in postfix
// order. Sound for any box inside the tile (a document leaf answers with its tile's class). One
// leaf (causal, eagle3, ...) skips the stack, which lives in local memory.
__device__ inline TileClass classify(const BuildParams& p, int64_t b, int64_t m, int64_t n, const TileBox& box) {
  if (p.program.num_ops == 1) return classify_leaf(p, p.program.ops[0], b, m, n, box);
  TileClass stack[kMaxMaskNodes];
  int top = 0;
  for (int i = 0; i < p.program.num_ops; ++i) {
    const MaskOp& op = p.program.ops[i];
    switch (op.kind) {
      case MaskOpKind::kAnd:
        --top;
        stack[top - 1] = detail::and_class(stack[top - 1], stack[top]);
        break;
      case MaskOpKind::kOr:
        --top;
        stack[top - 1] = detail::or_class(stack[top - 1], stack[top]);
        break;
      default: stack[top++] = classify_leaf(p, op, b, m, n, box); break;
    }
  }
  return stack[0];
}

// Row q of sample b over columns [kv_begin, kv_end): one bitmap row (kBitmapWordsPerRow words,
// zero on entry).
// Built-in predicates are pure, so evaluating every leaf and combining the rows gives the bits
// of the CPU builder's candidate-driven evaluation.
__device__ inline void evaluate_row(const BuildParams& p, int64_t b, int64_t q, int64_t kv_begin, int64_t kv_end,
                                    uint32_t (&out)[kBitmapWordsPerRow]) {
  if (p.program.num_ops == 1) {  // one leaf (causal, eagle3, ...): no stack
    const MaskOp& op = p.program.ops[0];
    switch (op.kind) {
      case MaskOpKind::kBand: return op.band.fill_row(b, q, kv_begin, kv_end, out);
      case MaskOpKind::kDocument: return op.document.predicate.fill_row(b, q, kv_begin, kv_end, out);
      case MaskOpKind::kPrefixLm: return op.prefix_lm.fill_row(b, q, kv_begin, kv_end, out);
      case MaskOpKind::kPadding: return op.padding.fill_row(b, q, kv_begin, kv_end, out);
      case MaskOpKind::kEagle3: return op.eagle3.fill_row(b, q, kv_begin, kv_end, out);
      default: return;
    }
  }
  uint32_t stack[kMaxMaskNodes][kBitmapWordsPerRow];
  int top = 0;
  for (int i = 0; i < p.program.num_ops; ++i) {
    const MaskOp& op = p.program.ops[i];
    if (op.kind == MaskOpKind::kAnd || op.kind == MaskOpKind::kOr) {
      --top;
      for (int w = 0; w < kBitmapWordsPerRow; ++w) {
        stack[top - 1][w] = op.kind == MaskOpKind::kAnd ? stack[top - 1][w] & stack[top][w]
                                                          : stack[top - 1][w] | stack[top][w];
      }
      continue;
    }
    uint32_t* row = stack[top++];
    for (int w = 0; w < kBitmapWordsPerRow; ++w) row[w] = 0;
    switch (op.kind) {
      case MaskOpKind::kBand: op.band.fill_row(b, q, kv_begin, kv_end, row); break;
      case MaskOpKind::kDocument: op.document.predicate.fill_row(b, q, kv_begin, kv_end, row); break;
      case MaskOpKind::kPrefixLm: op.prefix_lm.fill_row(b, q, kv_begin, kv_end, row); break;
      case MaskOpKind::kPadding: op.padding.fill_row(b, q, kv_begin, kv_end, row); break;
      case MaskOpKind::kEagle3: op.eagle3.fill_row(b, q, kv_begin, kv_end, row); break;
      default: break;
    }
  }
  for (int w = 0; w < kBitmapWordsPerRow; ++w) out[w] = stack[0][w];
}

// Row r of tile `box` (zero past Q_LEN; fill_row never sets columns past KV_LEN).
__device__ inline void tile_row(const BuildParams& p, int64_t b, const TileBox& box, int r,
                                uint32_t (&words)[kBitmapWordsPerRow]) {
  for (int w = 0; w < kBitmapWordsPerRow; ++w) words[w] = 0;
  const int64_t q = box.q_first + r;
  if (q <= box.q_last) evaluate_row(p, b, q, box.kv_first, box.kv_last + 1, words);
}

// Word w of row r of a tile with every in-range element set.
__device__ inline uint32_t in_range_word(const TileBox& box, int r, int w) {
  if (box.q_first + r > box.q_last) return 0;
  const int cols = static_cast<int>(box.kv_last - box.kv_first + 1) - 32 * w;
  return cols >= 32 ? ~0u : cols > 0 ? (1u << cols) - 1 : 0u;
}

__global__ void __launch_bounds__(256) tile_id_ranges_kernel(const int32_t* ids, IdRange* ranges, int64_t batch,
                                                             int64_t len) {
  const int64_t tiles = (len + kTileSize - 1) / kTileSize;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= batch * tiles) return;  // whole warps leave together
  const int64_t b = warp / tiles;
  const int64_t first = (warp % tiles) * kTileSize;
  const int64_t last = detail::min64(len, first + kTileSize) - 1;
  const int32_t* row = ids + b * len;
  int32_t lo = row[first], hi = row[first];
  for (int64_t i = first + lane; i <= last; i += 32) {
    lo = min(lo, row[i]);
    hi = max(hi, row[i]);
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    lo = min(lo, __shfl_xor_sync(~0u, lo, offset));
    hi = max(hi, __shfl_xor_sync(~0u, hi, offset));
  }
  if (lane == 0) ranges[warp] = IdRange{lo, hi};
}

using BlockScan = cub::BlockScan<int, kThreads>;

// Exclusive offsets of every row's partial tiles, by the last row CTA (one CTA, a few chunks).
__device__ inline void scan_row_partials(const BuildParams& p, typename BlockScan::TempStorage& storage) {
  __threadfence();
  int carry = 0;
  for (int64_t start = 0; start < p.rows; start += kThreads * kScanItems) {
    int items[kScanItems];
    const int64_t base = start + threadIdx.x * kScanItems;
    for (int k = 0; k < kScanItems; ++k) items[k] = base + k < p.rows ? __ldcg(&p.row_partials[base + k]) : 0;
    int total;
    BlockScan(storage).ExclusiveSum(items, items, total);
    for (int k = 0; k < kScanItems; ++k) {
      if (base + k < p.rows) p.row_offsets[base + k] = carry + items[k];
    }
    carry += total;
    __syncthreads();  // the scan storage is reused
  }
  if (threadIdx.x == 0) {
    p.counters[1] = carry;
    p.counters[0] = 0;  // ready for the next build into this buffer
  }
}

__global__ void __launch_bounds__(kThreads, 1) classify_rows_kernel(const __grid_constant__ BuildParams p) {
  __shared__ typename BlockScan::TempStorage scan_storage;
  __shared__ uint8_t states[kThreads];
  __shared__ int16_t checks[kThreads];  // chunk positions of the tiles to evaluate
  __shared__ int any_visible[kThreads];  // per check: some element visible
  __shared__ int all_visible[kThreads];  // per check: every in-range element visible
  __shared__ uint16_t open_boxes[kThreads * kSubBoxes];  // check * kSubBoxes + box, undecided boxes
  __shared__ int num_open;
  __shared__ bool last_row;

  const int64_t row = blockIdx.x;
  const int64_t b = row / p.mq;
  const int64_t m = row % p.mq;
  const int tid = threadIdx.x;
  int32_t* kv_list = p.kv_indices + row * p.n;
  int32_t* full_list = p.full_kv_indices + row * p.n;
  int partial_count = 0;
  int full_count = 0;
  // One leaf other than document ids classifies a single row exactly (every value of kv - q on
  // the row is reached, lengths split rows and columns cleanly): a row's class then tells
  // whether it has a visible / a masked element, cheaper than its bits.
  const MaskOpKind leaf = p.program.ops[0].kind;
  const bool row_classes_exact = p.program.num_ops == 1 && leaf != MaskOpKind::kDocument;

  for (int64_t chunk = 0; chunk < p.n; chunk += kThreads) {
    const int64_t n = chunk + tid;
    uint8_t state = kStateEmpty;
    if (n < p.n) {
      const TileBox box = tile_box(p, m, n);
      const TileClass cls = classify(p, b, m, n, box);
      state = cls == TileClass::kEmpty                      ? kStateEmpty
              : cls == TileClass::kFull && complete(box)    ? kStateFull
                                                            : kStateCheck;
    }
    states[tid] = state;
    any_visible[tid] = 0;
    all_visible[tid] = 1;
    if (tid == 0) num_open = 0;
    int position, num_checks;
    BlockScan(scan_storage).ExclusiveSum(state == kStateCheck ? 1 : 0, position, num_checks);
    if (state == kStateCheck) checks[position] = static_cast<int16_t>(tid);
    __syncthreads();

    // Refine as the CPU builder does: nothing visible -> empty; complete and all visible -> full.
    // A box's class is sound (empty: nothing visible in it; full: all of it visible), so boxes
    // classified empty or full decide their rows; the rows of the other boxes are evaluated. A
    // tile cut by a length (a row of tiles all undecided) costs one box of rows, not 128 rows.
    if (num_checks > 0) {
      for (int item = tid; item < num_checks * kSubBoxes; item += kThreads) {
        const int c = item / kSubBoxes;
        const int64_t nc = chunk + checks[c];
        const TileBox box = tile_box(p, m, nc);
        const int64_t first = box.q_first + (item % kSubBoxes) * kSubRows;
        if (first > box.q_last) continue;  // past Q_LEN
        const TileBox sub{first, detail::min64(box.q_last, first + kSubRows - 1), box.kv_first, box.kv_last};
        const TileClass cls = classify(p, b, m, nc, sub);
        if (cls == TileClass::kEmpty) {
          atomicAnd(&all_visible[c], 0);
        } else if (cls == TileClass::kFull) {
          atomicOr(&any_visible[c], 1);
        } else {
          open_boxes[atomicAdd(&num_open, 1)] = static_cast<uint16_t>(item);
        }
      }
      __syncthreads();
      const int open_rows = num_open * kSubRows;
      for (int item = tid; item < open_rows; item += kThreads) {
        const int open = open_boxes[item / kSubRows];
        const int c = open / kSubBoxes;
        const int r = (open % kSubBoxes) * kSubRows + item % kSubRows;  // tile row
        const int64_t nc = chunk + checks[c];
        const TileBox box = tile_box(p, m, nc);
        if (box.q_first + r > box.q_last) continue;  // past Q_LEN
        bool any = false, all = true;
        if (row_classes_exact) {
          const TileBox row_box{box.q_first + r, box.q_first + r, box.kv_first, box.kv_last};
          const TileClass cls = classify(p, b, m, nc, row_box);
          any = cls != TileClass::kEmpty;
          all = cls == TileClass::kFull;
        } else {
          uint32_t words[kBitmapWordsPerRow];
          tile_row(p, b, box, r, words);
          for (int w = 0; w < kBitmapWordsPerRow; ++w) {
            any = any || words[w] != 0;
            all = all && words[w] == in_range_word(box, r, w);
          }
        }
        if (any) atomicOr(&any_visible[c], 1);
        if (!all) atomicAnd(&all_visible[c], 0);
      }
      __syncthreads();
      if (tid < num_checks) {
        const bool whole = complete(tile_box(p, m, chunk + checks[tid]));
        states[checks[tid]] = !any_visible[tid]               ? kStateEmpty
                              : whole && all_visible[tid] != 0 ? kStateFull
                                                               : kStatePartial;
      }
      __syncthreads();
    }

    state = states[tid];
    const int packed = (state == kStatePartial ? 1 : 0) + (state == kStateFull ? 1 << kFullShift : 0);
    int offset, total;
    BlockScan(scan_storage).ExclusiveSum(packed, offset, total);
    if (n < p.n) {
      p.tile_states[row * p.n + n] = state;
      p.partial_tile_ids[row * p.n + n] = -1;  // partial tiles get their id in finish_kernel
      if (state == kStatePartial) kv_list[partial_count + (offset & 0xffff)] = static_cast<int32_t>(n);
      if (state == kStateFull) full_list[full_count + (offset >> kFullShift)] = static_cast<int32_t>(n);
    }
    partial_count += total & 0xffff;
    full_count += total >> kFullShift;
    __syncthreads();  // states, checks and the scan storage are reused by the next chunk
  }

  // Unused list entries are 0, as in the CPU builder.
  for (int64_t i = partial_count + tid; i < p.n; i += kThreads) kv_list[i] = 0;
  for (int64_t i = full_count + tid; i < p.n; i += kThreads) full_list[i] = 0;
  if (tid == 0) {
    p.kv_num_blocks[row] = partial_count;
    p.full_kv_num_blocks[row] = full_count;
    p.row_partials[row] = partial_count;
    __threadfence();  // the count is visible before this row is counted as finished
    last_row = atomicAdd(&p.counters[0], 1) == p.rows - 1;
  }
  __syncthreads();
  if (last_row) scan_row_partials(p, scan_storage);
}

// Bitmap of partial tile `id` (< the true count): its row is the last one whose first id is
// <= id (a binary search over row_offsets), its column the row's list entry id - first id.
__device__ inline void write_bitmap(const BuildParams& p, int64_t id, int r) {
  int64_t lo = 0, hi = p.rows - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (p.row_offsets[mid] <= id) lo = mid; else hi = mid - 1;
  }
  const int64_t row = lo;
  const int64_t n = p.kv_indices[row * p.n + (id - p.row_offsets[row])];
  if (r == 0) p.partial_tile_ids[row * p.n + n] = static_cast<int32_t>(id);
  uint32_t words[kBitmapWordsPerRow];
  tile_row(p, row / p.mq, tile_box(p, row % p.mq, n), r, words);
  static_assert(kBitmapWordsPerRow == 4, "one 16-byte store per bitmap row");
  reinterpret_cast<uint4*>(p.bitmaps + id * kBitmapWords)[r] = make_uint4(words[0], words[1], words[2], words[3]);
}

// The q lists of kv-tile column `column` (= b * n + kv tile), from the states of its tiles: a
// warp, 32 q tiles per ballot, kColumnLoads loads in flight per lane.
__device__ inline void write_column_lists(const BuildParams& p, int64_t column, int lane) {
  constexpr int kColumnLoads = 4;
  const int64_t b = column / p.n;
  const int64_t n = column % p.n;
  const uint8_t* states = p.tile_states + b * p.mq * p.n + n;  // + m * p.n
  int32_t* q_list = p.q_indices + column * p.mq;
  int32_t* full_list = p.full_q_indices + column * p.mq;
  const uint32_t below = (1u << lane) - 1;
  int partial_count = 0;
  int full_count = 0;
  for (int64_t chunk = 0; chunk < p.mq; chunk += 32 * kColumnLoads) {
    uint8_t state[kColumnLoads];
#pragma unroll
    for (int k = 0; k < kColumnLoads; ++k) {
      const int64_t m = chunk + 32 * k + lane;
      state[k] = m < p.mq ? states[m * p.n] : kStateEmpty;
    }
#pragma unroll
    for (int k = 0; k < kColumnLoads; ++k) {
      const int32_t m = static_cast<int32_t>(chunk + 32 * k + lane);
      const uint32_t partial = __ballot_sync(~0u, state[k] == kStatePartial);
      const uint32_t full = __ballot_sync(~0u, state[k] == kStateFull);
      if (state[k] == kStatePartial) q_list[partial_count + __popc(partial & below)] = m;
      if (state[k] == kStateFull) full_list[full_count + __popc(full & below)] = m;
      partial_count += __popc(partial);
      full_count += __popc(full);
    }
  }
  for (int64_t i = partial_count + lane; i < p.mq; i += 32) q_list[i] = 0;
  for (int64_t i = full_count + lane; i < p.mq; i += 32) full_list[i] = 0;
  if (lane == 0) {
    p.q_num_blocks[column] = partial_count;
    p.full_q_num_blocks[column] = full_count;
  }
}

inline constexpr int kBitmapsPerCta = 2 * kTilesPerPass;

// CTAs [0, bitmap_ctas): kBitmapsPerCta bitmaps each, by id, over the capacity (the true count
// is known only here: CTAs past it return at once); the rest: kColumnsPerCta kv-tile columns'
// q lists each, a warp per column. Spreading bitmaps by id keeps a row of many partial tiles (a
// sample's length boundary) from serializing on one CTA.
__global__ void __launch_bounds__(kThreads, 1) finish_kernel(const __grid_constant__ BuildParams p,
                                                              int64_t bitmap_ctas) {
  const int64_t block = blockIdx.x;
  if (block < bitmap_ctas) {
    const int64_t count = detail::min64(__ldcg(&p.counters[1]), p.capacity);
    for (int k = threadIdx.x / kTileSize; k < kBitmapsPerCta; k += kTilesPerPass) {
      const int64_t id = block * kBitmapsPerCta + k;
      if (id < count) write_bitmap(p, id, threadIdx.x % kTileSize);
    }
  } else {
    const int64_t column = (block - bitmap_ctas) * kColumnsPerCta + threadIdx.x / 32;
    if (column < p.rows / p.mq * p.n) write_column_lists(p, column, threadIdx.x % 32);
  }
}

}  // namespace flashflex::cuda::mask_kernels
