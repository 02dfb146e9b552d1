// HostBlockMask: the view handed to the backends and element lookup through the tile lists.
#include "flashflex/block_mask.hpp"

#include "mask/bitmap.hpp"

namespace flashflex {

BlockMask HostBlockMask::view() const {
  BlockMask m;
  m.batch = batch;
  m.heads = heads;
  m.q_len = q_len;
  m.kv_len = kv_len;
  m.num_q_tiles = num_q_tiles;
  m.num_kv_tiles = num_kv_tiles;
  m.num_partial_tiles = num_partial_tiles();
  m.device = Device{};
  m.kv_num_blocks = kv_num_blocks.data();
  m.kv_indices = kv_indices.data();
  m.full_kv_num_blocks = full_kv_num_blocks.data();
  m.full_kv_indices = full_kv_indices.data();
  m.q_num_blocks = q_num_blocks.data();
  m.q_indices = q_indices.data();
  m.full_q_num_blocks = full_q_num_blocks.data();
  m.full_q_indices = full_q_indices.data();
  m.partial_tile_ids = partial_tile_ids.data();
  m.bitmaps = bitmaps.data();
  return m;
}

bool HostBlockMask::visible(int64_t b, int64_t h, int64_t q, int64_t kv) const {
  if (q < 0 || q >= q_len || kv < 0 || kv >= kv_len) return false;
  const int64_t bh = (batch == 1 ? 0 : b) * heads + (heads == 1 ? 0 : h);
  const int64_t m = q / kTileSize;
  const int64_t n = kv / kTileSize;
  const int64_t row = bh * num_q_tiles + m;
  for (int32_t i = 0; i < full_kv_num_blocks[row]; ++i) {
    if (full_kv_indices[row * num_kv_tiles + i] == n) return true;
  }
  // Only listed tiles are ever visited: a bitmap id on an unlisted tile does not make it visible.
  for (int32_t i = 0; i < kv_num_blocks[row]; ++i) {
    if (kv_indices[row * num_kv_tiles + i] != n) continue;
    const int32_t id = partial_tile_ids[row * num_kv_tiles + n];
    return id >= 0 && detail::bitmap_bit(&bitmaps[static_cast<size_t>(id) * kBitmapWords],
                                         static_cast<int>(q % kTileSize), static_cast<int>(kv % kTileSize));
  }
  return false;
}

}  // namespace flashflex
