// Tensor maps (CUtensorMap) for the copy engine (TMA, sm_90 and newer), encoded on the host:
//   encode_tensor_map     any tiled map, through the driver's cuTensorMapEncodeTiled, looked up
//                         once through the runtime so that nothing links the driver library
//   encode_dq_tensor_map  the backward's dQ accumulator as the 2-d fp32 view [rows, head_dim],
//                         boxes of box_rows x 32 columns, 128-byte swizzle (common/dq_writer.cuh)
//   tma_can_map           whether a 16-bit [B, H, T, D] view's pointer and strides suit TMA
//   encode_bhtd_map       such a view as the 4-d map (head_dim, len, heads, batch), boxes of 64
//                         columns (the 128-byte swizzle's span) by box_rows rows, zero fill out of
//                         bounds (the sm90 forward's Q, K, V)
// Maps are encoded for every call (the tensors move); the kernels take them as __grid_constant__
// parameters.
#pragma once

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "api/message.hpp"
#include "cuda/cuda_check.hpp"
#include "cuda/params.hpp"
#include "flashflex/error.hpp"

namespace flashflex::cuda {

// dims / strides: innermost first (strides in bytes, rank - 1 of them, multiples of 16);
// `what` names the tensor in errors.
inline void encode_tensor_map(CUtensorMap* map, CUtensorMapDataType type, int rank, void* data,
                              const cuuint64_t* dims, const cuuint64_t* strides, const cuuint32_t* box,
                              CUtensorMapSwizzle swizzle, CUtensorMapL2promotion promotion, ErrorKind on_failure,
                              const char* what) {
  using Encode = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                              const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                              CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
  static Encode encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    FLASHFLEX_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault,
                                                          &found));
    if (found != cudaDriverEntryPointSuccess || fn == nullptr) {
      throw Error(ErrorKind::kCuda, "cuTensorMapEncodeTiled: not found in the CUDA driver (the copy engine needs it)");
    }
    return reinterpret_cast<Encode>(fn);
  }();
  const cuuint32_t element_strides[5] = {1, 1, 1, 1, 1};
  const CUresult status = encode(map, type, static_cast<cuuint32_t>(rank), data, dims, strides, box, element_strides,
                                 CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, promotion, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (status != CUDA_SUCCESS) {
    throw Error(on_failure, flashflex::detail::concat(what, ": cuTensorMapEncodeTiled failed with CUresult ",
                                                      static_cast<int>(status)));
  }
}

inline void encode_dq_tensor_map(CUtensorMap* map, float* dq_accum, int64_t rows, int head_dim, int box_rows) {
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(head_dim), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(head_dim) * sizeof(float)};
  const cuuint32_t box[2] = {32, static_cast<cuuint32_t>(box_rows)};
  encode_tensor_map(map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 2, dq_accum, dims, strides, box, CU_TENSOR_MAP_SWIZZLE_128B,
                    CU_TENSOR_MAP_L2_PROMOTION_L2_128B, ErrorKind::kCuda, "dQ accumulator");
}

// 16-byte aligned data and strides below 2^40 bytes (a size-1 dimension's stride, 0, is never used).
inline bool tma_can_map(const void* data, int64_t stride_t, int64_t stride_h, int64_t stride_b) {
  if (reinterpret_cast<std::uintptr_t>(data) % 16 != 0) return false;
  for (int64_t s : {stride_t, stride_h, stride_b}) {
    if (s < 0 || (s * 2) % 16 != 0 || s * 2 >= (int64_t{1} << 40)) return false;
  }
  return true;
}

// `name` names the tensor in errors (kUnsupported: the caller may take another path). A stride 0
// (size-1 dimension) becomes the tensor's whole span, which no other dimension's rows overlap;
// lengths of 0 become 1 (such a map is never read).
inline void encode_bhtd_map(CUtensorMap* map, const char* name, const TensorView& t, bool bf16, int head_dim,
                            int64_t len, int64_t heads, int64_t batch, int box_rows) {
  int64_t span = head_dim;
  for (int64_t extent : {t.stride_t * len, t.stride_h * heads, t.stride_b * batch}) span = extent > span ? extent : span;
  span = (span + 7) / 8 * 8;
  auto fix = [span](int64_t s) { return s == 0 ? span : s; };
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(head_dim), static_cast<cuuint64_t>(len > 0 ? len : 1),
                              static_cast<cuuint64_t>(heads), static_cast<cuuint64_t>(batch)};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(fix(t.stride_t) * 2), static_cast<cuuint64_t>(fix(t.stride_h) * 2),
                                 static_cast<cuuint64_t>(fix(t.stride_b) * 2)};
  const cuuint32_t box[4] = {64, static_cast<cuuint32_t>(box_rows), 1, 1};
  encode_tensor_map(map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4, t.data, dims,
                    strides, box, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, ErrorKind::kUnsupported,
                    name);
}

}  // namespace flashflex::cuda
