// KvStepCursor: the kv steps one CTA of the forward visits for a q tile, read from the tile's
// BlockMask lists: every partial kv tile first (each step carries the tile's bitmap), then every
// full tile (no masking work); empty tiles are never visited. Without a block mask every kv tile
// is full. A 128-column tile is cut into kSubSteps steps of kBlockN columns; steps that would
// start at or past KV_LEN (the ragged last tile) are skipped. Every thread walks the same
// sequence, in registers (a shared-memory walk moved by one thread measured 8-10% slower on H100:
// that thread's warp lagged behind the step barrier), so barrier handshakes of threads that walk
// it independently match. The list arrays are read through the (constant-bank) kernel
// parameters. Two ways to start:
//   KvStepCursor(p, b, h, m)   loads the tile's list heads and keeps one tile of look-ahead
//                              (kLookAhead; the sm80 forward)
//   KvStepCursor(p, head)      from a KvListHead loaded earlier (load_kv_list_head: one round
//                              trip, issued a tile ahead by a persistent kernel); each later tile
//                              is read when the cursor reaches it (!kLookAhead; the sm90 forward)
// kBlockN: columns per step (a divisor of 128). The list layout is in include/flashflex/block_mask.hpp.
#pragma once

#include <cstdint>

#include "cuda/params.hpp"
#include "flashflex/block_mask.hpp"

namespace flashflex::cuda {

struct KvStep {
  int kv_start;   // first kv column of the step
  int bitmap_id;  // partial tile: index of its bitmap in p.mask.bitmaps; full tile: -1
};

// Row of q tile m of (b, h) in the mask's [batch, heads, num_q_tiles] arrays (p.mask.present).
__device__ __forceinline__ int64_t kv_list_row(const FwdParams& p, int b, int h, int m) {
  const int mb = p.mask.batch == 1 ? 0 : b;
  const int mh = p.mask.heads == 1 ? 0 : h;
  return (static_cast<int64_t>(mb) * p.mask.heads + mh) * p.num_q_tiles + m;
}

// The head of one q tile's lists: the counts and both lists' first entries, loaded together (no
// load depends on another).
struct KvListHead {
  int num_partial = 0;
  int num_entries = 0;
  int first_partial = 0;
  int first_full = 0;
  int64_t list_offset = 0;  // of this q tile's row in the [batch, heads, num_q_tiles, num_kv_tiles] lists
};

__device__ inline KvListHead load_kv_list_head(const FwdParams& p, int b, int h, int m) {
  KvListHead head;
  if (!p.mask.present) {
    head.num_entries = p.num_kv_tiles;
    return head;
  }
  const int64_t row = kv_list_row(p, b, h, m);
  head.list_offset = row * p.num_kv_tiles;
  head.num_partial = p.mask.kv_num_blocks[row];
  head.num_entries = head.num_partial + p.mask.full_kv_num_blocks[row];
  if (p.num_kv_tiles > 0) {  // entries past a list's count are allocated (undefined values)
    head.first_partial = p.mask.kv_indices[head.list_offset];
    head.first_full = p.mask.full_kv_indices[head.list_offset];
  }
  return head;
}

template <int kBlockN, bool kLookAhead = true>
class KvStepCursor {
 public:
  static constexpr int kSubSteps = kTileSize / kBlockN;
  static_assert(kTileSize % kBlockN == 0, "a step is a part of a 128-column tile");

  __device__ KvStepCursor(const FwdParams& p, int b, int h, int m) : p_(p) {
    static_assert(kLookAhead, "this constructor keeps a tile of look-ahead");
    if (p.mask.present) {
      const int64_t row = kv_list_row(p, b, h, m);
      num_partial_ = p.mask.kv_num_blocks[row];
      num_entries_ = num_partial_ + p.mask.full_kv_num_blocks[row];
      list_offset_ = row * p.num_kv_tiles;
    } else {
      num_partial_ = 0;
      num_entries_ = p.num_kv_tiles;
      list_offset_ = 0;
    }
    if (num_entries_ > 0) {
      tile_ = tile_at(0);
      next_tile_ = num_entries_ > 1 ? tile_at(1) : 0;
    }
  }

  __device__ KvStepCursor(const FwdParams& p, const KvListHead& head)
      : p_(p), list_offset_(head.list_offset), num_partial_(head.num_partial), num_entries_(head.num_entries),
        tile_(head.num_partial > 0 ? head.first_partial : head.first_full) {
    static_assert(!kLookAhead, "a cursor from a list head reads each tile when it reaches it");
  }

  __device__ bool valid() const { return entry_ < num_entries_; }
  __device__ int kv_start() const { return tile_ * kTileSize + sub_ * kBlockN; }
  __device__ bool partial() const { return entry_ < num_partial_; }
  // Index of the current partial tile's bitmap in p.mask.bitmaps (partial() must hold).
  __device__ int bitmap_id() const { return p_.mask.partial_tile_ids[list_offset_ + tile_]; }

  // The current step (valid() must hold). A partial step reads its bitmap index from global
  // memory: call step() a step ahead of the compute that uses it.
  __device__ KvStep step() const { return {kv_start(), partial() ? bitmap_id() : -1}; }

  __device__ void advance() {
    // Next step of this tile, unless it would start at or past KV_LEN (n * 128 < KV_LEN holds for
    // every listed tile n, so its first step always exists).
    if (++sub_ < kSubSteps && kv_start() < p_.kv_len) return;
    sub_ = 0;
    if (++entry_ >= num_entries_) return;
    if constexpr (kLookAhead) {
      tile_ = next_tile_;
      if (entry_ + 1 < num_entries_) next_tile_ = tile_at(entry_ + 1);  // one tile of look-ahead
    } else {
      tile_ = tile_at(entry_);
    }
  }

 private:
  __device__ int tile_at(int e) const {
    if (!p_.mask.present) return e;  // no mask: every kv tile, in order
    return e < num_partial_ ? p_.mask.kv_indices[list_offset_ + e]
                            : p_.mask.full_kv_indices[list_offset_ + e - num_partial_];
  }

  const FwdParams& p_;
  int64_t list_offset_ = 0;  // of this q tile's row in the [batch, heads, num_q_tiles, num_kv_tiles] lists
  int num_partial_ = 0;
  int num_entries_ = 0;
  int entry_ = 0;
  int sub_ = 0;
  int tile_ = 0;
  int next_tile_ = 0;  // kLookAhead only
};

}  // namespace flashflex::cuda
