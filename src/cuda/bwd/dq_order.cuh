// The dQ order of deterministic mode with a block mask, run before the main kernel (bwd/passes.cu):
//   bwd_rank_mark_kernel / bwd_rank_scan_kernel: for each (mask batch-head, q tile m, kv tile n
//     listing m) the number of CTAs of the kv tiles above n that list m. The CTAs that add into one
//     q tile of dQ take turns in descending kv order (bwd/dq_writer.cuh), each waiting for that
//     many before it.
#pragma once

#include <cstdint>

#include "cuda/params.hpp"
#include "flashflex/block_mask.hpp"

namespace flashflex::bwd {

// rank[bh, n, m] = 1 where kv tile n lists q tile m (partial or full); rank starts zeroed.
// Grid (num_kv_tiles, mask batch * heads).
__global__ void bwd_rank_mark_kernel(const cuda::BwdParams p) {
  const int n = blockIdx.x, bh = blockIdx.y;
  const int64_t row = static_cast<int64_t>(bh) * p.num_kv_tiles + n;
  int32_t* rank = p.dq_rank + row * p.num_q_tiles;
  const int partial = p.mask.q_num_blocks[row], full = p.mask.full_q_num_blocks[row];
  for (int i = threadIdx.x; i < partial; i += blockDim.x) rank[p.mask.q_indices[row * p.num_q_tiles + i]] = 1;
  for (int i = threadIdx.x; i < full; i += blockDim.x) rank[p.mask.full_q_indices[row * p.num_q_tiles + i]] = 1;
}

// rank[bh, n, m] = CTAs of the kv tiles n' > n that list m (read only where n lists m); a tile
// has 128 / block_n CTAs, the last one possibly fewer. One thread per (bh, m).
__global__ void bwd_rank_scan_kernel(const cuda::BwdParams p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t total = static_cast<int64_t>(p.mask.batch) * p.mask.heads * p.num_q_tiles;
  if (i >= total) return;
  const int64_t bh = i / p.num_q_tiles, m = i % p.num_q_tiles;
  int32_t* col = p.dq_rank + bh * p.num_kv_tiles * p.num_q_tiles + m;
  int32_t count = 0;
  for (int n = p.num_kv_tiles - 1; n >= 0; --n) {
    int32_t* r = col + static_cast<int64_t>(n) * p.num_q_tiles;
    if (*r != 0) {
      *r = count;
      const int keys = min(kTileSize, p.kv_len - n * kTileSize);
      count += (keys + p.block_n - 1) / p.block_n;
    }
  }
}

}  // namespace flashflex::bwd
