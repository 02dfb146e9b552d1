// Score modifications: applied to every visible score s = scale * q.k before masking (torch
// flex semantics), with their derivatives in the backward. A small closed set, compiled ahead
// of time: the kernels take the kind as a template parameter; and kLinked, any other mod,
// compiled at run time and linked into a kernel shipped as LTO-IR (flashflex/linked_kernel.hpp).
#pragma once

#include <cstdint>

#include "flashflex/tensor.hpp"

namespace flashflex {

enum class ScoreModKind : int {
  kNone = 0,
  kSoftcap = 1,  // s -> c * tanh(s / c);             ds/ds' = 1 - tanh^2(s / c)
  kAlibi = 2,    // s -> s + slope[h] * (kv - q);      ds/ds' = 1
  kBias = 3,     // s -> s + bias[b, h, q, kv];        ds/ds' = 1, d/dbias = dS
  kLinked = 4,   // s -> hook(s, b, h, q, kv, tensors): a linked kernel's own function
};

// A tensor a linked hook reads, as the generated code indexes it (FlexModTensor of
// python/flashflex/_score_mod_codegen.py, the same layout): data, element strides and sizes of up
// to kHookTensorDims dims (unused dims: size 1, stride 0), and the element type code there
// (0 float32, 1 float64, 2 bfloat16, 3 float16, 4 int32, 5 int64, 6 bool / uint8, 7 int16, 8 int8).
inline constexpr int kHookTensorDims = 8;
inline constexpr int kMaxHookTensors = 4;  // they travel in the kernel parameters (no copy, graph-safe)
inline constexpr int kMaxHookGathers = 8;  // floating gathers one hook makes (_score_mod_codegen.MAX_GATHERS)
struct HookTensor {
  const void* data = nullptr;
  int64_t stride[kHookTensorDims] = {};
  int64_t size[kHookTensorDims] = {};
  int32_t dtype = 0;
};
static_assert(sizeof(HookTensor) == 144, "HookTensor must keep FlexModTensor's layout");

struct ScoreMod {
  ScoreModKind kind = ScoreModKind::kNone;
  double softcap = 0.0;     // kSoftcap: c > 0
  TensorRef alibi_slopes;   // kAlibi: float32 [Hq], one slope per query head
  TensorRef bias;           // kBias: [B or 1, Hq or 1, Q_LEN, KV_LEN], any float dtype
  // kLinked: the kernel of this pass (load_linked_kernel) and the tensors its hook reads, on the
  // kernel's device, alive until the call's work on its stream is done.
  const void* linked_kernel = nullptr;
  int num_hook_tensors = 0;
  HookTensor hook_tensors[kMaxHookTensors];
  // kLinked, backward: for gather g of the hook, a float32 buffer with the strides of the tensor
  // it gathers from (zeroed by the caller), where d loss / d element is added; null: none wanted.
  float* hook_gather_grads[kMaxHookGathers] = {};

  static ScoreMod none() { return {}; }
  static ScoreMod soft_cap(double cap) {
    ScoreMod m;
    m.kind = ScoreModKind::kSoftcap;
    m.softcap = cap;
    return m;
  }
  static ScoreMod alibi(TensorRef slopes) {
    ScoreMod m;
    m.kind = ScoreModKind::kAlibi;
    m.alibi_slopes = slopes;
    return m;
  }
  static ScoreMod additive_bias(TensorRef bias) {
    ScoreMod m;
    m.kind = ScoreModKind::kBias;
    m.bias = bias;
    return m;
  }
  static ScoreMod linked(const void* kernel, const HookTensor* tensors, int num_tensors) {
    ScoreMod m;
    m.kind = ScoreModKind::kLinked;
    m.linked_kernel = kernel;
    m.num_hook_tensors = num_tensors;
    for (int i = 0; i < num_tensors && i < kMaxHookTensors; ++i) m.hook_tensors[i] = tensors[i];
    return m;
  }
};

const char* score_mod_name(ScoreModKind kind);

}  // namespace flashflex
