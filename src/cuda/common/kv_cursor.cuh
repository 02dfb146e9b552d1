// KvStepCursor: the kv steps one CTA of the forward visits, read from its q tile's
// BlockMask lists: every partial kv tile first (each step carries the tile's bitmap), then every
// full tile (no masking work); empty tiles are never visited. Without a block mask every kv tile
// is full. A 128-column tile is cut into kSubSteps steps of kBlockN columns; steps that would
// start at or past KV_LEN (the ragged last tile) are skipped. The cursor is uniform across the
// CTA: every thread walks the same sequence, in registers (a shared-memory walk moved by one
// thread measured 8-10% slower on H100: that thread's warp lagged behind the step barrier). The
// list arrays are read through the (constant-bank) kernel parameters, with one tile of
// look-ahead. kBlockN: columns per step (a divisor of 128). The list layout is in
// include/flashflex/block_mask.hpp.
#pragma once

#include <cstdint>

#include "cuda/params.hpp"
#include "flashflex/block_mask.hpp"

namespace flashflex::cuda {

struct KvStep {
  int kv_start;   // first kv column of the step
  int bitmap_id;  // partial tile: index of its bitmap in p.bitmaps; full tile: -1
};

template <int kBlockN>
class KvStepCursor {
 public:
  static constexpr int kSubSteps = kTileSize / kBlockN;
  static_assert(kTileSize % kBlockN == 0, "a step is a part of a 128-column tile");

  __device__ KvStepCursor(const FwdParams& p, int b, int h, int m) : p_(p) {
    if (p.mask.present) {
      const int mb = p.mask.batch == 1 ? 0 : b;
      const int mh = p.mask.heads == 1 ? 0 : h;
      const int64_t row = (static_cast<int64_t>(mb) * p.mask.heads + mh) * p.num_q_tiles + m;
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

  __device__ bool valid() const { return entry_ < num_entries_; }

  // The current step (valid() must hold). A partial step reads its bitmap index from global
  // memory: call step() a step ahead of the compute that uses it.
  __device__ KvStep step() const {
    const int bitmap_id = entry_ < num_partial_ ? p_.mask.partial_tile_ids[list_offset_ + tile_] : -1;
    return {tile_ * kTileSize + sub_ * kBlockN, bitmap_id};
  }

  __device__ void advance() {
    // Next step of this tile, unless it would start at or past KV_LEN (n * 128 < KV_LEN holds for
    // every listed tile n, so its first step always exists).
    if (++sub_ < kSubSteps && tile_ * kTileSize + sub_ * kBlockN < p_.kv_len) return;
    sub_ = 0;
    if (++entry_ >= num_entries_) return;
    tile_ = next_tile_;
    if (entry_ + 1 < num_entries_) next_tile_ = tile_at(entry_ + 1);  // one tile of look-ahead
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
  int next_tile_ = 0;
};

}  // namespace flashflex::cuda
