// BlockMask: the block-sparse description of a mask that every backend consumes.
//
// The (Q_LEN x KV_LEN) score matrix is cut into kTileSize x kTileSize tiles. A tile is
//   full    - every element visible: run with no masking work,
//   partial - some elements visible: AND the scores with the tile's bitmap,
//   empty   - nothing visible: never visited.
// A tile that reaches past Q_LEN or KV_LEN is never full (padding counts as masked).
//
// Layout (mirrors torch's BlockMask, int32, contiguous; `batch` and `heads` may be 1, meaning
// the mask is the same for every sample / head):
//   kv_num_blocks       [batch, heads, num_q_tiles]                partial kv-tiles per q-tile
//   kv_indices          [batch, heads, num_q_tiles, num_kv_tiles]  first count entries valid, ascending
//   full_kv_num_blocks  [batch, heads, num_q_tiles]                full kv-tiles per q-tile
//   full_kv_indices     [batch, heads, num_q_tiles, num_kv_tiles]
//   q_num_blocks        [batch, heads, num_kv_tiles]               partial q-tiles per kv-tile (backward)
//   q_indices           [batch, heads, num_kv_tiles, num_q_tiles]
//   full_q_num_blocks   [batch, heads, num_kv_tiles]
//   full_q_indices      [batch, heads, num_kv_tiles, num_q_tiles]
//   partial_tile_ids    [batch, heads, num_q_tiles, num_kv_tiles]  bitmap of tile (m, n), or -1 if not partial
//   bitmaps             [num_partial_tiles, kTileSize, kBitmapWordsPerRow] uint32
// A tile appears at most once per row of the lists (partial and full together); only listed
// tiles are visited, whatever partial_tile_ids holds for the others.
// Bitmap bit of element (r, c) of a tile: word r * kBitmapWordsPerRow + c / 32, bit c % 32;
// rows and columns past Q_LEN / KV_LEN are 0.
#pragma once

#include <cstdint>
#include <vector>

#include "flashflex/tensor.hpp"

namespace flashflex {

inline constexpr int kTileSize = 128;
inline constexpr int kBitmapWordsPerRow = kTileSize / 32;
inline constexpr int kBitmapWords = kTileSize * kBitmapWordsPerRow;  // 512 uint32 per tile

// Index limits, checked before anything is allocated. A sequence length is at most
// 2^31 - kTileSize, so that every index of its padded last tile (up to
// num_tiles(len) * kTileSize - 1) fits the kernels' int32 row and column indices. A BlockMask
// describes at most 2^31 - 1 tiles (batch * heads * q tiles * kv tiles), so that the int32
// bitmap ids of partial_tile_ids can name every one of them.
inline constexpr int64_t kMaxSeqLen = int64_t{2147483647} - kTileSize + 1;  // 2147483520
inline constexpr int64_t kMaxMaskTiles = int64_t{2147483647};

// Non-owning view; all arrays live on `device` (the device of the attention tensors).
struct BlockMask {
  int64_t batch = 1;
  int64_t heads = 1;
  int64_t q_len = 0;
  int64_t kv_len = 0;
  int64_t num_q_tiles = 0;
  int64_t num_kv_tiles = 0;
  int64_t num_partial_tiles = 0;
  Device device{};

  const int32_t* kv_num_blocks = nullptr;
  const int32_t* kv_indices = nullptr;
  const int32_t* full_kv_num_blocks = nullptr;
  const int32_t* full_kv_indices = nullptr;
  const int32_t* q_num_blocks = nullptr;
  const int32_t* q_indices = nullptr;
  const int32_t* full_q_num_blocks = nullptr;
  const int32_t* full_q_indices = nullptr;
  const int32_t* partial_tile_ids = nullptr;
  const uint32_t* bitmaps = nullptr;
};

// Owning host copy, produced by the CPU builders (see mask.hpp).
struct HostBlockMask {
  int64_t batch = 1;
  int64_t heads = 1;
  int64_t q_len = 0;
  int64_t kv_len = 0;
  int64_t num_q_tiles = 0;
  int64_t num_kv_tiles = 0;

  std::vector<int32_t> kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices;
  std::vector<int32_t> q_num_blocks, q_indices, full_q_num_blocks, full_q_indices;
  std::vector<int32_t> partial_tile_ids;
  std::vector<uint32_t> bitmaps;

  int64_t num_partial_tiles() const { return static_cast<int64_t>(bitmaps.size()) / kBitmapWords; }
  BlockMask view() const;
  // Whether element (q, kv) of sample b, head h is visible, read from the tile lists and bitmaps.
  bool visible(int64_t b, int64_t h, int64_t q, int64_t kv) const;
};

inline int64_t num_tiles(int64_t len) { return (len + kTileSize - 1) / kTileSize; }

}  // namespace flashflex
