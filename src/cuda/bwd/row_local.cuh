// The EAGLE3 row-local pass of the backward (include/flashflex/eagle3.hpp), run after the
// block-sparse kernel over block 0 and before dQ's conversion. The forward's LSE and dpsum
// (= rowsum(dO * O) - dlse, bwd/preprocess.cuh) already include the row-local keys, so the
// block-sparse kernel needs no change; this pass adds what the diagonal keys K_j[q] contribute:
//   p_j  = exp2(q.K_j[q] * scale * log2(e) - LSE2)      dS_j = p_j (dO.V_j[q] - dpsum)
//   dQ  += dS_j K_j[q]               (into the fp32 accumulator, unscaled like the main kernel's)
//   dK_j[q] = scale * sum over the group's query heads of dS_j q,   dV_j[q] = sum of p_j dO
// One warp per (row q, kv head, sample) owns the whole GQA group, so dK_j / dV_j are written once
// (no atomics, same bits every run) and dQ's accumulator row is read-modified-written by this warp
// alone. Each lane holds D / 32 contiguous columns; dots are warp-shuffle reductions. Rows past
// the valid length (LSE -inf, lse2 +inf) get dK_j = dV_j = 0 and add nothing to dQ.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/ptx/math.cuh"
#include "cuda/ptx/mma.cuh"
#include "cuda/params.hpp"

namespace flashflex::bwd {

inline constexpr int kRowLocalBwdWarps = 8;  // rows per CTA

// kE consecutive elements as floats (kE = 2, 4 or 8: one 4, 8 or 16-byte load).
template <typename T, int kE>
__device__ __forceinline__ void load_cols(const T* src, float (&f)[kE]) {
  uint32_t w[kE / 2];
  if constexpr (kE == 2) {
    w[0] = *reinterpret_cast<const uint32_t*>(src);
  } else if constexpr (kE == 4) {
    const uint2 v = *reinterpret_cast<const uint2*>(src);
    w[0] = v.x, w[1] = v.y;
  } else {
    const uint4 v = *reinterpret_cast<const uint4*>(src);
    w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
  }
#pragma unroll
  for (int i = 0; i < kE / 2; ++i) {
    const float2 x = ptx::unpack2<T>(w[i]);
    f[2 * i] = x.x, f[2 * i + 1] = x.y;
  }
}

template <typename T, int kE>
__device__ __forceinline__ void store_cols(T* dst, const float (&f)[kE], float factor) {
  uint32_t w[kE / 2];
#pragma unroll
  for (int i = 0; i < kE / 2; ++i) w[i] = ptx::pack2<T>(f[2 * i] * factor, f[2 * i + 1] * factor);
  if constexpr (kE == 2) {
    *reinterpret_cast<uint32_t*>(dst) = w[0];
  } else if constexpr (kE == 4) {
    *reinterpret_cast<uint2*>(dst) = make_uint2(w[0], w[1]);
  } else {
    *reinterpret_cast<uint4*>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
  }
}

template <int kE>
__device__ __forceinline__ float dot_cols(const float (&a)[kE], const float (&b)[kE]) {
  float d = 0.f;
#pragma unroll
  for (int e = 0; e < kE; ++e) d = fmaf(a[e], b[e], d);
  return d;
}

template <typename T>
__device__ __forceinline__ const T* row_ptr(const cuda::TensorView& t, int b, int h, int64_t row) {
  return static_cast<const T*>(t.data) + b * t.stride_b + h * t.stride_h + row * t.stride_t;
}

// Grid (ceil(q_len / kRowLocalBwdWarps), batch * kv_heads); kRowLocalBwdWarps warps.
template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kRowLocalBwdWarps * 32) row_local_bwd_kernel(const __grid_constant__ cuda::RowLocalBwdParams p) {
  constexpr int kE = kHeadDim / 32;            // columns per lane
  constexpr int kChunk = kHeadDim <= 128 ? 8 : 4;  // blocks whose K, V, dK, dV rows stay in registers
  const int lane = threadIdx.x % 32;
  const int t = blockIdx.x * kRowLocalBwdWarps + threadIdx.x / 32;
  if (t >= p.q_len) return;  // whole warps: t is warp-uniform
  const int b = blockIdx.y / p.kv_heads, hkv = blockIdx.y % p.kv_heads;
  const bool valid = t < p.keys.limit.valid_rows(b, p.q_len);
  const int col = lane * kE;

  for (int first = 0; first < p.keys.count; first += kChunk) {
    const int n = min(kChunk, p.keys.count - first);
    float kf[kChunk][kE], vf[kChunk][kE], dk[kChunk][kE], dv[kChunk][kE];
#pragma unroll
    for (int i = 0; i < kChunk; ++i)
#pragma unroll
      for (int e = 0; e < kE; ++e) dk[i][e] = dv[i][e] = kf[i][e] = vf[i][e] = 0.f;
    if (valid) {
#pragma unroll
      for (int i = 0; i < kChunk; ++i) {
        if (i < n) {
          load_cols<T, kE>(row_ptr<T>(p.keys.k[first + i], b, hkv, t) + col, kf[i]);
          load_cols<T, kE>(row_ptr<T>(p.keys.v[first + i], b, hkv, t) + col, vf[i]);
        }
      }
      for (int g = 0; g < p.group; ++g) {
        const int h = hkv * p.group + g;
        const int64_t stat = (static_cast<int64_t>(b) * p.q_heads + h) * p.q_len_pad + t;
        float qf[kE], df[kE], dq[kE];
        load_cols<T, kE>(row_ptr<T>(p.q, b, h, t) + col, qf);
        load_cols<T, kE>(row_ptr<T>(p.dout, b, h, t) + col, df);
        const float lse2 = p.lse2[stat], dpsum = p.dpsum[stat];
#pragma unroll
        for (int e = 0; e < kE; ++e) dq[e] = 0.f;
#pragma unroll
        for (int i = 0; i < kChunk; ++i) {
          if (i < n) {
            float s = dot_cols(qf, kf[i]), dp = dot_cols(df, vf[i]);
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) {
              s += __shfl_xor_sync(0xffffffffu, s, off);
              dp += __shfl_xor_sync(0xffffffffu, dp, off);
            }
            // An invalid row (lse2 +inf) adds nothing, even with a NaN score.
            const float pr = lse2 == INFINITY ? 0.f : ptx::exp2_approx(fmaf(s, p.scale_log2, -lse2));
            const float ds = pr * (dp - dpsum);
#pragma unroll
            for (int e = 0; e < kE; ++e) {
              dq[e] = fmaf(ds, kf[i][e], dq[e]);
              dk[i][e] = fmaf(ds, qf[e], dk[i][e]);
              dv[i][e] = fmaf(pr, df[e], dv[i][e]);
            }
          }
        }
        float* acc = p.dq_accum + stat * kHeadDim + col;
#pragma unroll
        for (int e = 0; e < kE; e += 2) {
          float2 a = *reinterpret_cast<float2*>(acc + e);
          a.x += dq[e], a.y += dq[e + 1];
          *reinterpret_cast<float2*>(acc + e) = a;
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kChunk; ++i) {
      if (i < n) {
        store_cols<T, kE>(const_cast<T*>(row_ptr<T>(p.dk[first + i], b, hkv, t)) + col, dk[i], p.scale);
        store_cols<T, kE>(const_cast<T*>(row_ptr<T>(p.dv[first + i], b, hkv, t)) + col, dv[i], 1.f);
      }
    }
  }
}

}  // namespace flashflex::bwd
