// Per-element work of a backward step on the S / dP fragments (mainloop_bwd.cuh): which scores
// are visible (partial tile: the tile's bitmap; ragged full tile: sequence bounds), the score mod
// in base-2 logit units with its derivative, P = exp2(logit2 - LSE2) and
// dS = P * (dP - dpsum) * mod'. The mod kind is a template parameter; identity compiles to the one
// FFMA of FA2.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/score_mod.cuh"
#include "cuda/sm80/params_bwd.hpp"
#include "flashflex/block_mask.hpp"
#include "flashflex/mods.hpp"
#include "flashflex/tensor.hpp"

namespace flashflex::sm80 {

// The score mod of one (sample, query head) step in base-2 logit units, over the functors of
// src/cuda/score_mod.cuh: logit2(acc) = log2(e) * mod(scale * acc), dmod = d mod / d s at
// s = scale * acc. Identity folds to one multiply (FA2's P = exp2(acc * scale_log2 - LSE2)).
template <ScoreModKind kMod>
struct BwdScoreMod {
  cuda::ScoreModOp<kMod> op;
  float scale;
  __device__ BwdScoreMod(const BwdParams& p, int b, int hq) : op(p.mod, b, hq), scale(p.scale) {}
  __device__ __forceinline__ float logit2(float acc, int q, int kv, float& dmod) const {
    const float s = acc * scale;
    dmod = op.derivative(s, q, kv);
    return op(s, q, kv) * cuda::kLog2e;
  }
};

// Soft-cap: the same tanh as ScoreModOp<kSoftcap> (cuda::detail::tanh_fast), computed once for
// both the value and the derivative.
template <>
struct BwdScoreMod<ScoreModKind::kSoftcap> {
  const BwdParams& p;  // softcap_scale, softcap_log2: read from the parameter bank, no register
  __device__ BwdScoreMod(const BwdParams& params, int, int) : p(params) {}
  __device__ __forceinline__ float logit2(float acc, int, int, float& dmod) const {
    const float t = cuda::detail::tanh_fast(acc * p.softcap_scale);
    dmod = 1.f - t * t;
    return t * p.softcap_log2;
  }
};

template <>
struct BwdScoreMod<ScoreModKind::kNone> {
  float scale_log2;
  __device__ BwdScoreMod(const BwdParams& p, int, int) : scale_log2(p.scale_log2) {}
  __device__ __forceinline__ float logit2(float acc, int, int, float& dmod) const {
    dmod = 1.f;
    return acc * scale_log2;
  }
};

// Visibility of a thread's S fragment (bit (mi * kFragsN + ni) * 4 + e). A partial tile reads its
// bitmap (rows and columns past the sequence are 0 there); a full tile that reaches past Q_LEN or
// KV_LEN checks bounds; any other full tile sees everything.
template <class Tr>
struct StepVisibility {
  // m0, n0: the step's first q row / key; row0, col0: the warp's first S row / column in the step.
  __device__ static uint32_t compute(const BwdParams& p, bool partial, int mask_bh, int q_tile, int kv_tile, int m0,
                                     int n0, int row0, int col0, int lane) {
    constexpr int kFragsM = Tr::kSdpFragsM, kFragsN = Tr::kSdpFragsN;
    const int g = lane >> 2, t = lane & 3;
    if (partial) {
      const int64_t tile_idx = (static_cast<int64_t>(mask_bh) * p.num_q_tiles + q_tile) * p.num_kv_tiles + kv_tile;
      const int id = __ldg(p.mask.partial_tile_ids + tile_idx);
      // This thread's rows in the tile's bitmap start at row r0; its columns sit in one word.
      const int r0 = m0 % kTileSize + row0 + g, c0 = n0 % kTileSize + col0;
      const uint32_t* bm = p.mask.bitmaps + static_cast<int64_t>(id) * kBitmapWords + r0 * kBitmapWordsPerRow + (c0 >> 5);
      const int bit0 = (c0 & 31) + 2 * t;
      uint32_t vis = 0;
#pragma unroll
      for (int mi = 0; mi < kFragsM; ++mi) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const uint32_t w = __ldg(bm + (mi * 16 + h * 8) * kBitmapWordsPerRow) >> bit0;
#pragma unroll
          for (int ni = 0; ni < kFragsN; ++ni)
#pragma unroll
            for (int e = 0; e < 2; ++e) vis |= ((w >> (ni * 8 + e)) & 1u) << ((mi * kFragsN + ni) * 4 + h * 2 + e);
        }
      }
      return vis;
    }
    if (m0 + Tr::kBlockM <= p.q_len && n0 + Tr::kBlockN <= p.kv_len) return ~0u;
    // Ragged full tile: rows below row_lim and columns below col_lim (relative to this thread's first).
    const int row_lim = p.q_len - (m0 + row0 + g), col_lim = p.kv_len - (n0 + col0 + 2 * t);
    uint32_t vis = 0;
#pragma unroll
    for (int mi = 0; mi < kFragsM; ++mi)
#pragma unroll
      for (int ni = 0; ni < kFragsN; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const bool in = (mi * 16 + (e >> 1) * 8 < row_lim) && (ni * 8 + (e & 1) < col_lim);
          vis |= static_cast<uint32_t>(in) << ((mi * kFragsN + ni) * 4 + e);
        }
    return vis;
  }
};

}  // namespace flashflex::sm80
