// Score modifications as compile-time functors, shared by the forward (src/cuda/sm80/*_fwd*) and
// the backward kernels. A functor is built once per CTA for its (batch b, query head h) from
// ScoreModParams, then applied to each score s = scale * q.k (torch flex semantics: the mod sees
// the scaled score, before masking) with the element's absolute (q_idx, kv_idx):
//
//   ScoreModOp<kKind> mod(params, b, h);            // params must outlive mod (it keeps a reference;
//                                                   // a __grid_constant__ kernel parameter is ideal)
//   float s_mod = mod(s, q_idx, kv_idx);            // the modified score
//   float ds    = mod.derivative(s, q_idx, kv_idx); // d s_mod / d s at the same s (backward)
//   ScoreModOp<kKind>::kIsIdentity                  // true only for kNone: kernels then keep
//                                                   // scores unscaled and skip the call entirely
//
// Kinds (include/flashflex/mods.hpp): none; softcap c * tanh(s / c); alibi s + slope[h] * (kv - q);
// bias s + bias[b', h', q, kv] (size-1 batch / head broadcast, any strides, fp32 / fp16 / bf16).
// Indices past Q_LEN or KV_LEN (padding of a ragged tile) read no bias; kernels mask them after.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "flashflex/mods.hpp"
#include "flashflex/tensor.hpp"

namespace flashflex::cuda {

inline constexpr float kLog2e = 1.4426950408889634f;  // log2(e): exp(x) = exp2(x * kLog2e)

// Device-side description of the score mod (plain data, filled on the host by the launchers).
struct ScoreModParams {
  float softcap = 0.f;                  // kSoftcap: c > 0
  const float* alibi_slopes = nullptr;  // kAlibi: float32 [Hq]
  int64_t alibi_stride = 1;
  const void* bias = nullptr;           // kBias: [B or 1, Hq or 1, Q_LEN, KV_LEN]
  DType bias_dtype = DType::kFloat32;
  int64_t bias_stride_b = 0;            // 0 for a broadcast (size-1) dimension
  int64_t bias_stride_h = 0;
  int64_t bias_stride_q = 0;
  int64_t bias_stride_kv = 1;
  int q_len = 0;
  int kv_len = 0;
};

namespace detail {

// tanh(x) = 1 - 2 / (exp(2x) + 1) through MUFU.EX2 and MUFU.RCP: absolute error about 2e-7 and
// exact saturation to +-1 for large |x|. Absolute (not relative) error is what a score needs.
__device__ __forceinline__ float tanh_fast(float x) {
  float e, r;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(e) : "f"(x * (2.f * kLog2e)));
  asm("rcp.approx.ftz.f32 %0, %1;\n" : "=f"(r) : "f"(e + 1.f));
  return fmaf(-2.f, r, 1.f);
}

__device__ __forceinline__ float load_as_float(const void* base, int64_t offset, DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return __half2float(static_cast<const __half*>(base)[offset]);
    case DType::kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[offset]);
    default: return static_cast<const float*>(base)[offset];
  }
}

}  // namespace detail

template <ScoreModKind kKind>
struct ScoreModOp;

template <>
struct ScoreModOp<ScoreModKind::kNone> {
  static constexpr bool kIsIdentity = true;
  __device__ ScoreModOp(const ScoreModParams&, int /*b*/, int /*h*/) {}
  __device__ float operator()(float s, int /*q*/, int /*kv*/) const { return s; }
  __device__ float derivative(float /*s*/, int /*q*/, int /*kv*/) const { return 1.f; }
};

template <>
struct ScoreModOp<ScoreModKind::kSoftcap> {
  static constexpr bool kIsIdentity = false;
  float cap, inv_cap;
  __device__ ScoreModOp(const ScoreModParams& params, int /*b*/, int /*h*/)
      : cap(params.softcap), inv_cap(1.f / params.softcap) {}
  __device__ float operator()(float s, int /*q*/, int /*kv*/) const { return cap * detail::tanh_fast(s * inv_cap); }
  // 1 - tanh^2(s / c): finite for every finite s (apply it before masking, never to -inf).
  __device__ float derivative(float s, int /*q*/, int /*kv*/) const {
    const float t = detail::tanh_fast(s * inv_cap);
    return 1.f - t * t;
  }
};

template <>
struct ScoreModOp<ScoreModKind::kAlibi> {
  static constexpr bool kIsIdentity = false;
  float slope;
  __device__ ScoreModOp(const ScoreModParams& params, int /*b*/, int h)
      : slope(params.alibi_slopes[h * params.alibi_stride]) {}
  __device__ float operator()(float s, int q, int kv) const { return s + slope * static_cast<float>(kv - q); }
  __device__ float derivative(float /*s*/, int /*q*/, int /*kv*/) const { return 1.f; }
};

template <>
struct ScoreModOp<ScoreModKind::kBias> {
  static constexpr bool kIsIdentity = false;
  const ScoreModParams& p;
  int64_t offset_bh;  // elements of bias[b', h'] from p.bias
  __device__ ScoreModOp(const ScoreModParams& params, int b, int h)
      : p(params), offset_bh(b * params.bias_stride_b + h * params.bias_stride_h) {}
  __device__ float operator()(float s, int q, int kv) const {
    if (q >= p.q_len || kv >= p.kv_len) return s;  // padding: never read, masked later
    return s + detail::load_as_float(p.bias, offset_bh + q * p.bias_stride_q + kv * p.bias_stride_kv, p.bias_dtype);
  }
  __device__ float derivative(float /*s*/, int /*q*/, int /*kv*/) const { return 1.f; }
};

}  // namespace flashflex::cuda
