// Index limits of the library (kMaxSeqLen, kMaxMaskTiles in include/flashflex/block_mask.hpp),
// checked by every entry point before any allocation: the attention entry points
// (validate.cpp, validate_eagle3.cpp) and both block-mask builders (src/cpu/block_mask_builder.cpp,
// src/api/block_mask_cuda.cpp). Messages name the argument, the limit and the value. Also the
// batch rule the builders share (broadcast_batch). Also the
// batch rule the builders share (broadcast_batch).
#pragma once

#include <cstdint>

#include "api/message.hpp"
#include "flashflex/block_mask.hpp"
#include "flashflex/error.hpp"
#include "flashflex/mask.hpp"

namespace flashflex::detail {

// `who`: the function or tensor the message starts with ("q", "build_block_mask"); `what`: the
// size's name ("seq_len", "kv_len").
inline void check_seq_len(const char* who, const char* what, int64_t len) {
  if (len > kMaxSeqLen) {
    throw Error(ErrorKind::kInvalidArgument,
                concat(who, ": expected ", what, " <= ", kMaxSeqLen, " (2^31 - ", kTileSize,
                       ": the indices of its last ", kTileSize, "-wide tile must fit in int32), got ", len));
  }
}

// batch * heads * num_tiles(q_len) * num_tiles(kv_len) <= kMaxMaskTiles, for extents already
// known to be in [1, 2^31); the product is formed by division, so it never overflows.
inline void check_mask_tiles(const char* who, int64_t batch, int64_t heads, int64_t q_len, int64_t kv_len) {
  const int64_t factors[] = {batch, heads, num_tiles(q_len), num_tiles(kv_len)};
  int64_t tiles = 1;
  bool over = false;
  for (int64_t f : factors) {
    if (f < 1) return;  // the caller's extent checks report it
    if (f > kMaxMaskTiles / tiles) {
      over = true;
      break;
    }
    tiles *= f;
  }
  if (over || tiles > kMaxMaskTiles) {
    throw Error(ErrorKind::kInvalidArgument,
                concat(who, ": expected at most ", kMaxMaskTiles, " tiles of ", kTileSize, " x ", kTileSize,
                       " (int32 bitmap ids), got batch ", batch, " * heads ", heads, " * ", factors[2],
                       " q tiles * ", factors[3], " kv tiles (q_len ", q_len, ", kv_len ", kv_len, ")"));
  }
}

// The batch a mask is built for: data of one sample apply to every sample (the rule of the Python
// mask_mods too), unless a user predicate may read b. Data of N > 1 samples need batch N.
inline int64_t broadcast_batch(const Mask& mask, int64_t batch) {
  return mask.batch() == 1 && !mask.depends_on_head() ? 1 : batch;
}

}  // namespace flashflex::detail
