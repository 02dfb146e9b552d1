// Host-side checks and helpers shared by the CUDA host composition (forward.cu, backward.cu,
// eagle3.cu): what the kernels need beyond src/api/validate.cpp (16-bit dtype, 16-byte aligned
// rows), the current-device guard, and the views the kernel parameters are made of
// (cuda/params.hpp), the score mod's with its scales derived once here.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "api/message.hpp"
#include "cuda/cuda_check.hpp"
#include "cuda/params.hpp"
#include "flashflex/block_mask.hpp"
#include "flashflex/mods.hpp"
#include "flashflex/tensor.hpp"

namespace flashflex::cuda {

// `pass` names the launcher in messages ("forward", "backward").
inline void check_half_dtype(const char* pass, DType dtype) {
  if (dtype != DType::kBFloat16 && dtype != DType::kFloat16) {
    throw Error(ErrorKind::kUnsupported, flashflex::detail::concat("q: the CUDA ", pass, " supports bfloat16 and float16, got ",
                                                        dtype_name(dtype), " (the CPU path serves float32)"));
  }
}

// The kernels move whole rows with 16-byte accesses: the data pointer and every outer stride
// (of a dimension larger than 1) must be 16-byte multiples.
inline void check_rows_aligned(const char* name, const TensorRef& t) {
  const int64_t element = static_cast<int64_t>(dtype_size(t.dtype));
  bool aligned = reinterpret_cast<std::uintptr_t>(t.data) % 16 == 0;
  for (int d = 0; d + 1 < t.rank; ++d) aligned = aligned && (t.sizes[d] == 1 || (t.strides[d] * element) % 16 == 0);
  if (aligned) return;
  char pointer[32];
  std::snprintf(pointer, sizeof(pointer), "%p", t.data);
  std::string strides;
  for (int d = 0; d < t.rank; ++d) strides += flashflex::detail::concat(d ? ", " : "", t.strides[d]);
  throw Error(ErrorKind::kUnsupported,
              flashflex::detail::concat(name, ": expected 16-byte aligned rows for the CUDA kernels (data pointer and batch, ",
                             "heads, seq_len strides multiples of 16 bytes), got pointer ", pointer, " and strides [",
                             strides, "] of ", element, "-byte elements; pass a contiguous tensor"));
}

// Stride of dimension d, 0 when the dimension has size 1 (its index is always 0).
inline int64_t stride_of(const TensorRef& t, int d) { return t.sizes[d] == 1 ? 0 : t.strides[d]; }

// A 4-d tensor as the kernels' strided view (data and the batch, heads, seq_len strides).
inline TensorView strided_view(const TensorRef& t) {
  TensorView v;
  v.data = t.data;
  v.stride_b = stride_of(t, 0);
  v.stride_h = stride_of(t, 1);
  v.stride_t = stride_of(t, 2);
  return v;
}

// Makes `index` the current device for the scope of the launches, restoring the caller's after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int index) {
    FLASHFLEX_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != index) FLASHFLEX_CUDA_CHECK(cudaSetDevice(index));
  }
  ~DeviceGuard() {
    int current = previous_;
    if (cudaGetDevice(&current) == cudaSuccess && current != previous_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

// A float32 [batch, heads, len] row statistic (lse, its gradient), or an absent one.
inline LseView lse_view(const TensorRef& t) {
  LseView v;
  if (!t.defined()) return v;
  v.data = static_cast<float*>(t.data);
  v.stride_b = stride_of(t, 0);
  v.stride_h = stride_of(t, 1);
  v.stride_t = stride_of(t, 2);
  return v;
}

// The BlockMask's arrays, both directions; an absent mask (null) is "every key visible".
inline BlockMaskView block_mask_view(const BlockMask* m) {
  BlockMaskView v;
  if (m == nullptr) return v;
  v.present = true;
  v.batch = static_cast<int>(m->batch);
  v.heads = static_cast<int>(m->heads);
  v.kv_num_blocks = m->kv_num_blocks;
  v.kv_indices = m->kv_indices;
  v.full_kv_num_blocks = m->full_kv_num_blocks;
  v.full_kv_indices = m->full_kv_indices;
  v.q_num_blocks = m->q_num_blocks;
  v.q_indices = m->q_indices;
  v.full_q_num_blocks = m->full_q_num_blocks;
  v.full_q_indices = m->full_q_indices;
  v.partial_tile_ids = m->partial_tile_ids;
  v.bitmaps = m->bitmaps;
  return v;
}

// `scale`: the resolved softmax scale (the mod sees scale * q.k).
inline ScoreModParams make_mod_params(const ScoreMod& mod, int q_len, int kv_len, double scale) {
  ScoreModParams m;
  m.q_len = q_len;
  m.kv_len = kv_len;
  switch (mod.kind) {
    case ScoreModKind::kSoftcap:
      m.softcap = static_cast<float>(mod.softcap);
      m.softcap_inv = 1.f / m.softcap;  // as the device would round it: the forward's tanh input
      m.softcap_scale = static_cast<float>(scale / mod.softcap);
      m.softcap_log2 = static_cast<float>(mod.softcap * kLog2eDouble);
      break;
    case ScoreModKind::kAlibi:
      m.alibi_slopes = static_cast<const float*>(mod.alibi_slopes.data);
      m.alibi_stride = mod.alibi_slopes.strides[0];
      break;
    case ScoreModKind::kBias:
      m.bias = mod.bias.data;
      m.bias_dtype = mod.bias.dtype;
      m.bias_stride_b = stride_of(mod.bias, 0);
      m.bias_stride_h = stride_of(mod.bias, 1);
      m.bias_stride_q = stride_of(mod.bias, 2);
      m.bias_stride_kv = stride_of(mod.bias, 3);
      break;
    case ScoreModKind::kLinked:
      for (int i = 0; i < mod.num_hook_tensors; ++i) m.hook_tensors[i] = mod.hook_tensors[i];
      for (int g = 0; g < kMaxHookGathers; ++g) m.hook_gather_grads[g] = mod.hook_gather_grads[g];
      break;
    case ScoreModKind::kNone:
      break;
  }
  return m;
}

}  // namespace flashflex::cuda
