// Epilogue of the sm80 backward main kernel (mainloop_bwd.cuh): the fp32 dK, dV accumulators of
// a CTA (summed over its query heads) are scaled (dK by the softmax scale) and either rounded to
// the input dtype and written to dk, dv (strided, rows past KV_LEN skipped; staged through the
// shared memory of K / V, which the main loop no longer reads, for 16-byte stores), or, when the
// GQA group is split over several CTAs, stored in fp32 into the workspace partials that
// bwd_reduce_dkv_kernel (bwd/convert.cuh) sums.
#pragma once

#include <cstdint>

#include "cuda/ptx/cp_async.cuh"
#include "cuda/ptx/mma.cuh"
#include "cuda/sm80/kernel_traits_bwd.cuh"
#include "cuda/params.hpp"

namespace flashflex::sm80 {

// Accumulator fragments [kKvFragsN][kKvFragsD][4] of one warp -> swizzled [kBlockN][kHeadDim] tile.
template <class Tr>
__device__ __forceinline__ void stage_acc(unsigned char* tile, const float (&acc)[Tr::kKvFragsN][Tr::kKvFragsD][4],
                                          float mul, int row0, int col0, int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mi = 0; mi < Tr::kKvFragsN; ++mi)
#pragma unroll
    for (int ni = 0; ni < Tr::kKvFragsD; ++ni)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = row0 + mi * 16 + g + h * 8, col = col0 + ni * 8 + 2 * t;
        *reinterpret_cast<uint32_t*>(tile + 2 * swizzle<Tr::kHeadDim>(row, col)) =
            ptx::pack2<typename Tr::T>(acc[mi][ni][h * 2] * mul, acc[mi][ni][h * 2 + 1] * mul);
      }
}

// Swizzled [kBlockN][kHeadDim] shared tile -> rows [n0, kv_len) of `out` (16-byte stores).
template <class Tr>
__device__ __forceinline__ void write_tile(const unsigned char* tile, const cuda::TensorView& out, int b, int kv_head,
                                           int n0, int kv_len, int tid) {
  using T = typename Tr::T;
  constexpr int kChunksPerRow = Tr::kHeadDim / 8;
  constexpr int kChunks = Tr::kBlockN * kChunksPerRow;
  T* base = static_cast<T*>(out.data) + b * out.stride_b + kv_head * out.stride_h;
#pragma unroll
  for (int i = 0; i < kChunks / Tr::kNumThreads; ++i) {
    const int c = tid + i * Tr::kNumThreads;
    const int row = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
    if (n0 + row < kv_len) {
      *reinterpret_cast<uint4*>(base + (n0 + row) * out.stride_t + col) =
          *reinterpret_cast<const uint4*>(tile + 2 * swizzle<Tr::kHeadDim>(row, col));
    }
  }
}

template <class Tr>
__device__ __forceinline__ void store_dkv(const cuda::BwdParams& p, unsigned char* smem,
                                          const float (&dk)[Tr::kKvFragsN][Tr::kKvFragsD][4],
                                          const float (&dv)[Tr::kKvFragsN][Tr::kKvFragsD][4], int b, int kv_head,
                                          int split, int n0, int tid) {
  const int lane = tid & 31, warp = tid >> 5;
  const int row0 = (warp / Tr::kWarpsKvD) * Tr::kKvTileN, col0 = (warp % Tr::kWarpsKvD) * Tr::kKvTileD;
  if (p.dkv_partial != nullptr) {
    // [B, Hkv, splits, 2, kv_len_pad, D]: rows up to kv_len_pad exist, no bounds needed.
    const int64_t slab = static_cast<int64_t>(p.kv_len_pad) * Tr::kHeadDim;
    float* dk_out = p.dkv_partial + ((static_cast<int64_t>(b) * p.kv_heads + kv_head) * p.splits + split) * 2 * slab +
                    static_cast<int64_t>(n0) * Tr::kHeadDim;
    float* dv_out = dk_out + slab;
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mi = 0; mi < Tr::kKvFragsN; ++mi)
#pragma unroll
      for (int ni = 0; ni < Tr::kKvFragsD; ++ni)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int64_t off = (row0 + mi * 16 + g + h * 8) * Tr::kHeadDim + col0 + ni * 8 + 2 * t;
          *reinterpret_cast<float2*>(dk_out + off) =
              make_float2(dk[mi][ni][h * 2] * p.scale, dk[mi][ni][h * 2 + 1] * p.scale);
          *reinterpret_cast<float2*>(dv_out + off) = make_float2(dv[mi][ni][h * 2], dv[mi][ni][h * 2 + 1]);
        }
    ptx::cp_async_wait<0>();  // leave no copy in flight at exit
    return;
  }
  ptx::cp_async_wait<0>();  // a CTA with no q tiles still has its K, V loads in flight
  __syncthreads();               // every warp is done reading K and V
  unsigned char* s_dk = smem + Tr::kOffK;
  unsigned char* s_dv = smem + Tr::kOffV;
  stage_acc<Tr>(s_dk, dk, p.scale, row0, col0, lane);
  stage_acc<Tr>(s_dv, dv, 1.f, row0, col0, lane);
  __syncthreads();
  write_tile<Tr>(s_dk, p.dk, b, kv_head, n0, p.kv_len, tid);
  write_tile<Tr>(s_dv, p.dv, b, kv_head, n0, p.kv_len, tid);
}

}  // namespace flashflex::sm80
