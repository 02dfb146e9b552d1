// Host-side checks and helpers shared by the CUDA launchers (forward.cu, backward.cu): what the
// kernels need beyond src/api/validate.cpp (16-bit dtype, 16-byte aligned rows, compute
// capability), the current-device guard, and the score mod's device parameters.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "api/message.hpp"
#include "cuda/cuda_check.hpp"
#include "cuda/score_mod.cuh"
#include "cuda/sm80/params_bwd.hpp"
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
inline sm80::BwdTensor strided_view(const TensorRef& t) {
  sm80::BwdTensor v;
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

// mma.sync and cp.async need compute capability 8.0.
inline void check_device_capability(int device) {
  int major = 0, minor = 0;
  FLASHFLEX_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  FLASHFLEX_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  if (major < 8) {
    throw Error(ErrorKind::kUnsupported,
                flashflex::detail::concat("q: the CUDA kernels need compute capability 8.0 or newer (mma.sync, cp.async), got ",
                               major, ".", minor, " on device ", device));
  }
}

inline ScoreModParams make_mod_params(const ScoreMod& mod, int q_len, int kv_len) {
  ScoreModParams m;
  m.q_len = q_len;
  m.kv_len = kv_len;
  switch (mod.kind) {
    case ScoreModKind::kSoftcap:
      m.softcap = static_cast<float>(mod.softcap);
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
    case ScoreModKind::kNone:
      break;
  }
  return m;
}

}  // namespace flashflex::cuda
