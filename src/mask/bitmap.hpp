// Bit access of a partial tile's bitmap (layout in include/flashflex/block_mask.hpp).
// Host and device: the CPU reference, the builders and the kernels read bits through it.
#pragma once

#include <cstdint>

#include "flashflex/block_mask.hpp"

#if defined(__CUDACC__)
#define FLASHFLEX_HOST_DEVICE __host__ __device__
#else
#define FLASHFLEX_HOST_DEVICE
#endif

namespace flashflex::detail {

// `tile` points at the kBitmapWords words of one partial tile.
FLASHFLEX_HOST_DEVICE inline bool bitmap_bit(const uint32_t* tile, int row, int col) {
  return (tile[row * kBitmapWordsPerRow + col / 32] >> (col % 32)) & 1u;
}

FLASHFLEX_HOST_DEVICE inline void bitmap_set(uint32_t* tile, int row, int col) {
  tile[row * kBitmapWordsPerRow + col / 32] |= 1u << (col % 32);
}

}  // namespace flashflex::detail
