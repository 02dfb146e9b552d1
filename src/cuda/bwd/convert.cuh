// The backward's last passes, after the main kernel of any architecture (bwd/passes.cu):
//   bwd_convert_dq_kernel:    dq = dq_accum * scale in q's dtype (16-byte loads and stores),
//   bwd_convert_dbias_kernel: dbias = dbias_accum in the bias's dtype (bias mod only),
//   bwd_reduce_dkv_kernel:    dk, dv = the sum, in split order, of the fp32 partials of the CTAs
//                             that share a kv tile when the GQA group is split (the main kernel's epilogue).
// Every element of dq / dbias is written (rows no kv tile reached hold an accumulated 0).
#pragma once

#include <cstdint>

#include "cuda/ptx/mma.cuh"
#include "cuda/params.hpp"
#include "flashflex/tensor.hpp"

namespace flashflex::bwd {

inline constexpr int kConvertThreads = 256;

// One thread per 8 elements of dq: grid covers B * Hq * Q_LEN * kHeadDim / 8.
template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kConvertThreads) bwd_convert_dq_kernel(const cuda::BwdParams p) {
  constexpr int kChunks = kHeadDim / 8;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kConvertThreads + threadIdx.x;
  const int64_t rows = static_cast<int64_t>(p.batch) * p.q_heads * p.q_len;
  if (i >= rows * kChunks) return;
  const int c = static_cast<int>(i % kChunks);
  const int64_t r = i / kChunks;
  const int t = static_cast<int>(r % p.q_len);
  const int bh = static_cast<int>(r / p.q_len);
  const int b = bh / p.q_heads, h = bh % p.q_heads;
  const float4* src =
      reinterpret_cast<const float4*>(p.dq_accum + (static_cast<int64_t>(bh) * p.q_len_pad + t) * kHeadDim + c * 8);
  const float4 x = src[0], y = src[1];
  uint4 out;
  out.x = ptx::pack2<T>(x.x * p.scale, x.y * p.scale);
  out.y = ptx::pack2<T>(x.z * p.scale, x.w * p.scale);
  out.z = ptx::pack2<T>(y.x * p.scale, y.y * p.scale);
  out.w = ptx::pack2<T>(y.z * p.scale, y.w * p.scale);
  T* dst = static_cast<T*>(p.dq.data) + b * p.dq.stride_b + h * p.dq.stride_h + t * p.dq.stride_t + c * 8;
  *reinterpret_cast<uint4*>(dst) = out;
}

// One thread per 8 elements of dk and of dv: grid covers B * Hkv * KV_LEN * kHeadDim / 8.
template <typename T, int kHeadDim>
__global__ void __launch_bounds__(kConvertThreads) bwd_reduce_dkv_kernel(const cuda::BwdParams p) {
  constexpr int kChunks = kHeadDim / 8;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kConvertThreads + threadIdx.x;
  const int64_t rows = static_cast<int64_t>(p.batch) * p.kv_heads * p.kv_len;
  if (i >= rows * kChunks) return;
  const int c = static_cast<int>(i % kChunks);
  const int64_t r = i / kChunks;
  const int t = static_cast<int>(r % p.kv_len);
  const int bh = static_cast<int>(r / p.kv_len);
  const int b = bh / p.kv_heads, h = bh % p.kv_heads;
  const int64_t slab = static_cast<int64_t>(p.kv_len_pad) * kHeadDim;
  const float* src = p.dkv_partial + static_cast<int64_t>(bh) * p.splits * 2 * slab + static_cast<int64_t>(t) * kHeadDim +
                     c * 8;
#pragma unroll
  for (int which = 0; which < 2; ++which) {  // dk, then dv
    float acc[8] = {};
    for (int s = 0; s < p.splits; ++s) {
      const float4* x = reinterpret_cast<const float4*>(src + (2 * s + which) * slab);
      const float4 a = x[0], bb = x[1];
      acc[0] += a.x, acc[1] += a.y, acc[2] += a.z, acc[3] += a.w;
      acc[4] += bb.x, acc[5] += bb.y, acc[6] += bb.z, acc[7] += bb.w;
    }
    uint4 out;
    out.x = ptx::pack2<T>(acc[0], acc[1]);
    out.y = ptx::pack2<T>(acc[2], acc[3]);
    out.z = ptx::pack2<T>(acc[4], acc[5]);
    out.w = ptx::pack2<T>(acc[6], acc[7]);
    const cuda::TensorView& dst = which == 0 ? p.dk : p.dv;
    *reinterpret_cast<uint4*>(static_cast<T*>(dst.data) + b * dst.stride_b + h * dst.stride_h + t * dst.stride_t +
                              c * 8) = out;
  }
}

// One thread per element of dbias [Bb, Hb, Q_LEN, KV_LEN]; dtype p.dbias_dtype.
__global__ void __launch_bounds__(kConvertThreads) bwd_convert_dbias_kernel(const cuda::BwdParams p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kConvertThreads + threadIdx.x;
  const int64_t cols = p.kv_len, rows = static_cast<int64_t>(p.bias_batch) * p.bias_heads * p.q_len;
  if (i >= rows * cols) return;
  const int kv = static_cast<int>(i % cols);
  const int64_t r = i / cols;
  const int t = static_cast<int>(r % p.q_len);
  const int bh = static_cast<int>(r / p.q_len);
  const int bb = bh / p.bias_heads, hb = bh % p.bias_heads;
  const float v = p.dbias_accum[i];
  const int64_t off = bb * p.dbias.stride_b + hb * p.dbias.stride_h + t * p.dbias.stride_t + kv;
  if (p.dbias_dtype == DType::kFloat32) {
    static_cast<float*>(p.dbias.data)[off] = v;
  } else if (p.dbias_dtype == DType::kBFloat16) {
    static_cast<__nv_bfloat16*>(p.dbias.data)[off] = __float2bfloat16_rn(v);
  } else {
    static_cast<__half*>(p.dbias.data)[off] = __float2half_rn(v);
  }
}

}  // namespace flashflex::bwd
