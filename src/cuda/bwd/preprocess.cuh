// The backward's preprocess pass, run before the main kernel of any architecture (bwd/passes.cu):
//   bwd_preprocess_kernel: per query row, dpsum = rowsum(dO * O) - dlse (FA2's D = rowsum(dO * O),
//     minus the lse gradient: dS = P (dP - D + dlse)) and LSE2 = LSE * log2(e), with
//     LSE = -inf (a row that saw nothing) mapped to +inf so that exp2(logit2 - LSE2) is 0 for
//     every logit, never NaN: such a row gets zero gradients even where its scores are not
//     masked (the EAGLE3 rows past a sample's valid length, RowLocalKeys in cuda/params.hpp).
//     Rows past Q_LEN (padding to 128) get 0.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/params.hpp"

namespace flashflex::bwd {

inline constexpr int kPreprocessThreads = 256;

// Unpacks 8 16-bit values.
template <typename T>
__device__ __forceinline__ void unpack8(const uint4& v, float (&f)[8]);

template <>
__device__ __forceinline__ void unpack8<__nv_bfloat16>(const uint4& v, float (&f)[8]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 x = __bfloat1622float2(h[i]);
    f[2 * i] = x.x;
    f[2 * i + 1] = x.y;
  }
}

template <>
__device__ __forceinline__ void unpack8<__half>(const uint4& v, float (&f)[8]) {
  const __half2* h = reinterpret_cast<const __half2*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 x = __half22float2(h[i]);
    f[2 * i] = x.x;
    f[2 * i + 1] = x.y;
  }
}

// One row per kHeadDim / 8 consecutive threads (16 bytes of dO and O each); grid covers
// B * Hq * q_len_pad rows.
template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kPreprocessThreads) bwd_preprocess_kernel(const cuda::BwdParams p) {
  constexpr int kThreadsPerRow = kHeadDim / 8;
  constexpr int kRowsPerBlock = kPreprocessThreads / kThreadsPerRow;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kThreadsPerRow;
  const int64_t rows = static_cast<int64_t>(p.batch) * p.q_heads * p.q_len_pad;
  const bool in_grid = row < rows;  // no early return: every lane takes part in the shuffles
  const int part = threadIdx.x % kThreadsPerRow;
  const int t = static_cast<int>(row % p.q_len_pad);
  const int bh = static_cast<int>(row / p.q_len_pad);
  const int b = bh / p.q_heads, h = bh % p.q_heads;
  const bool valid = in_grid && t < p.q_len;
  float dot = 0.f;
  if (valid) {
    const T* o = static_cast<const T*>(p.out.data) + b * p.out.stride_b + h * p.out.stride_h + t * p.out.stride_t;
    const T* d = static_cast<const T*>(p.dout.data) + b * p.dout.stride_b + h * p.dout.stride_h + t * p.dout.stride_t;
    float fo[8], fd[8];
    unpack8<T>(*reinterpret_cast<const uint4*>(o + part * 8), fo);
    unpack8<T>(*reinterpret_cast<const uint4*>(d + part * 8), fd);
#pragma unroll
    for (int i = 0; i < 8; ++i) dot += fo[i] * fd[i];
  }
#pragma unroll
  for (int off = kThreadsPerRow / 2; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
  if (!in_grid || part != 0) return;
  float lse2 = 0.f, dpsum = 0.f;
  if (valid) {
    const float lse = p.lse.data[b * p.lse.stride_b + h * p.lse.stride_h + t * p.lse.stride_t];
    lse2 = lse == -INFINITY ? INFINITY : lse * cuda::kLog2e;
    dpsum = dot;
    if (p.dlse.data != nullptr) dpsum -= p.dlse.data[b * p.dlse.stride_b + h * p.dlse.stride_h + t * p.dlse.stride_t];
  }
  p.lse2[row] = lse2;
  p.dpsum[row] = dpsum;
}

}  // namespace flashflex::bwd
