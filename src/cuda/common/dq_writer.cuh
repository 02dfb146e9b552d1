// The dQ writer of the backward's main kernels: adds one warp's fp32 dQ tile (its part of
// dQacc += dS K for one step, in the accumulator layout of common/fragment.cuh) into the workspace
// accumulator (cuda/params.hpp, BwdParams::dq_accum). Two policies, chosen per launch:
//   bulk (BwdParams::dq_bulk; code for sm_90 and newer, not deterministic): the warp stores its
//     tile into its own 128-byte-swizzled shared box, fences the async proxy, and one lane has the
//     copy engine add it (cp.reduce.async.bulk.tensor through BwdParams::dq_map, cuda/tma_map.hpp).
//     The 4096 reductions per step through the LSU kept the warps stalled on a full
//     memory-instruction queue (bench/NOTES.md, v11);
//   red.add from registers, in deterministic mode after the turn of this CTA (one semaphore per
//     (b, hq, q tile) counting the CTAs done; the ranks come from bwd/dq_order.cuh).
// Tr: the main kernel's traits (dQ warp tile kDqFragsM x kDqFragsD fragments, the staging box
// sizes and where the boxes start in shared memory).
#pragma once

#include <cstdint>

#include "cuda/common/q_walk.cuh"
#include "cuda/params.hpp"
#include "cuda/ptx/atomics_bwd.cuh"
#include "cuda/ptx/bulk_reduce.cuh"
#include "flashflex/block_mask.hpp"

namespace flashflex::cuda {

template <class Tr>
struct DqWriter {
  // cur / nxt: this step and the next of the q walk; kv_block: the CTA's block of kBlockN keys.
  __device__ __forceinline__ static void add(const BwdParams& p, float (&dq_acc)[Tr::kDqFragsM][Tr::kDqFragsD][4],
                                             uint32_t smem, const BwdStep& cur, const BwdStep& nxt, int b,
                                             int kv_tile, int kv_block, int dq_row0, int dq_col0, int warp,
                                             int lane, int tid) {
    constexpr int kCtasPerTile = kTileSize / Tr::kBlockN;
    const int g = lane >> 2, t = lane & 3;
#if __CUDA_ARCH__ >= 900
    if constexpr (Tr::kBulkDq) {
      if (p.dq_bulk) {  // through shared memory and the copy engine (see the top of this file)
        const uint32_t box = ((smem + Tr::kOffWalk + Tr::kWalkBytes + 1023u) & ~1023u) +
                             warp * Tr::kDqWarpStageBytes;
        if (lane == 0) ptx::bulk_wait_read_all();  // the previous step's add has read the box
        __syncwarp();
#pragma unroll
        for (int mi = 0; mi < Tr::kDqFragsM; ++mi)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int r = mi * 16 + g + h * 8;
#pragma unroll
            for (int ni = 0; ni < Tr::kDqFragsD; ++ni) {
              const int c = ni * 8 + 2 * t;  // 128-byte swizzle: 16-byte chunk ^= row % 8
              const uint32_t addr = box + (c / 32) * Tr::kDqBoxBytes + r * 128 +
                                    (((((c % 32) * 4) >> 4) ^ (r & 7)) << 4) + (((c % 32) * 4) & 15);
              ptx::st_shared_f32x2(addr, dq_acc[mi][ni][h * 2], dq_acc[mi][ni][h * 2 + 1]);
            }
          }
        ptx::fence_proxy_async_shared();
        __syncwarp();
        if (lane == 0) {
#pragma unroll
          for (int c = 0; c < Tr::kDqTileD; c += 32) {
            ptx::bulk_tensor_reduce_add_2d(&p.dq_map, box + (c / 32) * Tr::kDqBoxBytes, dq_col0 + c,
                                           static_cast<int>(cur.ws_row) + dq_row0);
          }
          ptx::bulk_commit_group();
        }
        return;
      }
    }
#endif
    const int hq = cur.hq, q_tile = cur.q_tile;
    int32_t* sem = nullptr;
    int rank = 0;
    if (p.deterministic) {  // wait for the CTAs of higher kv blocks that add into this q tile
      sem = p.dq_semaphore + (static_cast<int64_t>(b) * p.q_heads + hq) * p.num_q_tiles + q_tile;
      if (p.mask.present) {
        // CTAs of this kv tile: kCtasPerTile, fewer only in the last tile.
        const int keys = min(kTileSize, p.kv_len - kv_tile * kTileSize);
        const int ctas_in_tile = kCtasPerTile == 1 ? 1 : (keys + Tr::kBlockN - 1) / Tr::kBlockN;
        rank = __ldg(p.dq_rank + (static_cast<int64_t>(cur.mask_bh) * p.num_kv_tiles + kv_tile) * p.num_q_tiles +
                     q_tile) +
               ctas_in_tile - 1 - kv_block % kCtasPerTile;
      } else {
        rank = gridDim.y - 1 - kv_block;
      }
      if (tid == 0) {
        while (ptx::ld_acquire_gpu(sem) != rank) {
        }
      }
      __syncthreads();
    }
    float* dq = p.dq_accum + cur.ws_row * Tr::kHeadDim;
#pragma unroll
    for (int mi = 0; mi < Tr::kDqFragsM; ++mi)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float* row = dq + (dq_row0 + mi * 16 + g + h * 8) * Tr::kHeadDim + dq_col0 + 2 * t;
#pragma unroll
        for (int ni = 0; ni < Tr::kDqFragsD; ++ni) {
          ptx::red_add_f32x2(row + ni * 8, dq_acc[mi][ni][h * 2], dq_acc[mi][ni][h * 2 + 1]);
        }
      }
    if (p.deterministic && (!nxt.valid || nxt.hq != hq || nxt.q_tile != q_tile)) {
      __threadfence();  // publish: the next kv tile may add into this q tile
      __syncthreads();
      if (tid == 0) atomicExch(sem, rank + 1);
    }
  }

  // At the end of the kernel: shared memory must outlive the last bulk adds of each warp.
  __device__ __forceinline__ static void drain(const BwdParams& p) {
#if __CUDA_ARCH__ >= 900
    if (Tr::kBulkDq && p.dq_bulk && threadIdx.x % 32 == 0) ptx::bulk_wait_all();
#endif
  }
};

}  // namespace flashflex::cuda
