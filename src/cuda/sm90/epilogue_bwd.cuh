// Epilogue of the sm_90 backward main kernel (kernel_bwd.cuh): a consumer thread's fp32 dK, dV
// accumulators (summed over the CTA's query heads; two keys, D / 8 column pairs each, the
// ptx/wgmma.cuh layout) are scaled (dK by the softmax scale) and either rounded to the input dtype
// and written to dk, dv (strided, keys past KV_LEN skipped), or, when the GQA group is split over
// several CTAs, stored in fp32 into the workspace partials that bwd/convert.cuh sums (the layout
// of sm80/epilogue_bwd.cuh).
#pragma once

#include <cstdint>

#include "cuda/params.hpp"
#include "cuda/ptx/mma.cuh"

namespace flashflex::sm90 {

template <class Traits>
struct EpilogueBwd {
  using Element = typename Traits::Element;
  static constexpr int kD = Traits::kHeadDim;

  // key: this thread's first key (its second is key + 8); t: lane % 4.
  __device__ static void store(const cuda::BwdParams& p, const float (&dk)[Traits::kNTilesKV * 4],
                               const float (&dv)[Traits::kNTilesKV * 4], int b, int kv_head, int split, int key,
                               int t) {
    if (p.dkv_partial != nullptr) {
      // [B, Hkv, splits, 2, kv_len_pad, D]: rows up to kv_len_pad exist, no bounds needed.
      const int64_t slab = static_cast<int64_t>(p.kv_len_pad) * kD;
      float* dk_out = p.dkv_partial + ((static_cast<int64_t>(b) * p.kv_heads + kv_head) * p.splits + split) * 2 * slab;
      float* dv_out = dk_out + slab;
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int j = 0; j < Traits::kNTilesKV; ++j) {
          const int64_t off = static_cast<int64_t>(key + 8 * h) * kD + 8 * j + 2 * t;
          const int i = 4 * j + 2 * h;
          *reinterpret_cast<float2*>(dk_out + off) = make_float2(dk[i] * p.scale, dk[i + 1] * p.scale);
          *reinterpret_cast<float2*>(dv_out + off) = make_float2(dv[i], dv[i + 1]);
        }
      return;
    }
    Element* dk_out = static_cast<Element*>(p.dk.data) + b * p.dk.stride_b + kv_head * p.dk.stride_h;
    Element* dv_out = static_cast<Element*>(p.dv.data) + b * p.dv.stride_b + kv_head * p.dv.stride_h;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = key + 8 * h;
      if (row >= p.kv_len) continue;
#pragma unroll
      for (int j = 0; j < Traits::kNTilesKV; ++j) {
        const int i = 4 * j + 2 * h, col = 8 * j + 2 * t;
        *reinterpret_cast<uint32_t*>(dk_out + row * p.dk.stride_t + col) =
            ptx::pack2<Element>(dk[i] * p.scale, dk[i + 1] * p.scale);
        *reinterpret_cast<uint32_t*>(dv_out + row * p.dv.stride_t + col) = ptx::pack2<Element>(dv[i], dv[i + 1]);
      }
    }
  }
};

}  // namespace flashflex::sm90
