// Score modifications as compile-time functors, shared by the forward and backward kernels of
// every architecture. A functor is built once per CTA for its (batch b, query head h) from
// ScoreModParams (cuda/params.hpp), then applied to each score s = scale * q.k (torch flex semantics: the mod sees
// the scaled score, before masking) with the element's absolute (q_idx, kv_idx):
//
//   ScoreModOp<kKind> mod(params, b, h);            // params must outlive mod (it keeps a reference;
//                                                   // a __grid_constant__ kernel parameter is ideal)
//   float s_mod = mod(s, q_idx, kv_idx);            // the modified score
//   float ds    = mod.derivative(s, q_idx, kv_idx); // d s_mod / d s at the same s (backward)
//   ScoreModOp<kKind>::kIsIdentity                  // true only for kNone: kernels then keep
//                                                   // scores unscaled and skip the call entirely
//   ScoreModLogit2<kKind>                           // the backward's form: log2(e) * mod(scale * acc)
//                                                   // and its derivative from the raw q.k
//
// Kinds (include/flashflex/mods.hpp): none; softcap c * tanh(s / c); alibi s + slope[h] * (kv - q);
// bias s + bias[b', h', q, kv] (size-1 batch / head broadcast, any strides, fp32 / fp16 / bf16);
// linked, the extern hook flashflex_score_mod, defined only where a kernel built as LTO-IR is
// linked at run time with generated code (python/flashflex/_score_mod_codegen.py).
// Indices past Q_LEN or KV_LEN (padding of a ragged tile) read no bias and reach the hook clamped;
// kernels mask them after.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/params.hpp"
#include "flashflex/mods.hpp"
#include "flashflex/tensor.hpp"

namespace flashflex::cuda {

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
      : cap(params.softcap), inv_cap(params.softcap_inv) {}
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

// The generated hook (_score_mod_codegen.py's signature): the modified score, and its derivative
// with respect to the score and to each gathered element with that element's offset. Declared
// here, defined by the linked module; a kernel that calls it exists only as LTO-IR.
extern "C" __device__ float flashflex_score_mod(float score, int32_t b, int32_t h, int32_t q_idx, int32_t kv_idx,
                                                const flashflex::HookTensor* tensors, float* d_score,
                                                float* d_gathered, int64_t* gathered_offset);
// How many gathers the hook makes (at most kMaxHookGathers): a constant after linking.
extern "C" __device__ int flashflex_score_mod_gathers();

namespace flashflex::cuda {

template <>
struct ScoreModOp<ScoreModKind::kLinked> {
  static constexpr bool kIsIdentity = false;
  const ScoreModParams& p;
  int b, h;
  __device__ ScoreModOp(const ScoreModParams& params, int b_, int h_) : p(params), b(b_), h(h_) {}
  __device__ float operator()(float s, int q, int kv) const {
    float d_score;
    return call(s, q, kv, d_score);
  }
  __device__ float derivative(float s, int q, int kv) const {
    float d_score;
    call(s, q, kv, d_score);
    return d_score;
  }
  // Link-time optimisation inlines the hook: what a caller leaves unread is never computed.
  // Padding indices (a ragged tile) are clamped, not branched around: the hook only ever sees
  // indices inside Q_LEN x KV_LEN, as torch's mods do, and those elements are masked after.
  // (A branch around the call, decided before the hook is linked in, made the head-dim-256
  // kernel spill 12-32 bytes; the clamp spills nothing. bench/NOTES.md.)
  __device__ float call(float s, int q, int kv, float& d_score) const {
    float d_gathered[kMaxHookGathers];
    int64_t offset[kMaxHookGathers];
    return call(s, q, kv, d_score, d_gathered, offset);
  }
  // With each gather's partial derivative and the gathered element's offset (the backward's
  // gradients of captured tensors).
  __device__ float call(float s, int q, int kv, float& d_score, float (&d_gathered)[kMaxHookGathers],
                        int64_t (&offset)[kMaxHookGathers]) const {
    return flashflex_score_mod(s, b, h, min(q, p.q_len - 1), min(kv, p.kv_len - 1), p.hook_tensors, &d_score,
                               d_gathered, offset);
  }
};

// The score mod of one (sample, query head) in base-2 logit units, for the backward:
// logit2(acc) = log2(e) * mod(scale * acc) and dmod = d mod / d s at s = scale * acc. Identity folds
// to one multiply (FA2's P = exp2(acc * scale_log2 - LSE2)).
template <ScoreModKind kMod>
struct ScoreModLogit2 {
  ScoreModOp<kMod> op;
  float scale;
  __device__ ScoreModLogit2(const ScoreModParams& mod, float scale_, float /*scale_log2*/, int b, int hq)
      : op(mod, b, hq), scale(scale_) {}
  __device__ __forceinline__ float logit2(float acc, int q, int kv, float& dmod) const {
    const float s = acc * scale;
    dmod = op.derivative(s, q, kv);
    return op(s, q, kv) * kLog2e;
  }
};

// Soft-cap: the same tanh as ScoreModOp<kSoftcap> (detail::tanh_fast), computed once for both the
// value and the derivative.
template <>
struct ScoreModLogit2<ScoreModKind::kSoftcap> {
  const ScoreModParams& p;  // softcap_scale, softcap_log2: read from the parameter bank, no register
  __device__ ScoreModLogit2(const ScoreModParams& mod, float, float, int, int) : p(mod) {}
  __device__ __forceinline__ float logit2(float acc, int, int, float& dmod) const {
    const float t = detail::tanh_fast(acc * p.softcap_scale);
    dmod = 1.f - t * t;
    return t * p.softcap_log2;
  }
};

// Linked: value and derivative from one call of the hook, and, for the gradients of captured
// tensors, each gather's partial and offset.
template <>
struct ScoreModLogit2<ScoreModKind::kLinked> {
  ScoreModOp<ScoreModKind::kLinked> op;
  float scale;
  __device__ ScoreModLogit2(const ScoreModParams& mod, float scale_, float, int b, int hq)
      : op(mod, b, hq), scale(scale_) {}
  __device__ __forceinline__ float logit2(float acc, int q, int kv, float& dmod) const {
    return op.call(acc * scale, q, kv, dmod) * kLog2e;
  }
  __device__ __forceinline__ float logit2(float acc, int q, int kv, float& dmod,
                                          float (&d_gathered)[kMaxHookGathers],
                                          int64_t (&offset)[kMaxHookGathers]) const {
    return op.call(acc * scale, q, kv, dmod, d_gathered, offset) * kLog2e;
  }
};

template <>
struct ScoreModLogit2<ScoreModKind::kNone> {
  float scale_log2;
  __device__ ScoreModLogit2(const ScoreModParams&, float, float scale_log2_, int, int) : scale_log2(scale_log2_) {}
  __device__ __forceinline__ float logit2(float acc, int, int, float& dmod) const {
    dmod = 1.f;
    return acc * scale_log2;
  }
};

}  // namespace flashflex::cuda
