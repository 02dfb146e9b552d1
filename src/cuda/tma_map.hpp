// Tensor maps (CUtensorMap) for the copy engine (TMA, sm_90 and newer), encoded on the host:
//   encode_tensor_map     any tiled map, through the driver's cuTensorMapEncodeTiled, looked up
//                         once through the runtime so that nothing links the driver library
//   encode_dq_tensor_map  the backward's dQ accumulator as the 2-d fp32 view [rows, head_dim],
//                         boxes of box_rows x 32 columns, 128-byte swizzle (common/dq_writer.cuh)
// Maps are encoded for every call (the tensors move); the kernels take them as __grid_constant__
// parameters.
#pragma once

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "api/message.hpp"
#include "cuda/cuda_check.hpp"
#include "flashflex/error.hpp"

namespace flashflex::cuda {

// dims / strides: innermost first (strides in bytes, rank - 1 of them, multiples of 16);
// `what` names the tensor in errors.
inline void encode_tensor_map(CUtensorMap* map, CUtensorMapDataType type, int rank, void* data,
                              const cuuint64_t* dims, const cuuint64_t* strides, const cuuint32_t* box,
                              CUtensorMapSwizzle swizzle, const char* what) {
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
                                 CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                                 CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (status != CUDA_SUCCESS) {
    throw Error(ErrorKind::kCuda, flashflex::detail::concat("cuTensorMapEncodeTiled (", what,
                                                            ") failed with CUresult ", static_cast<int>(status)));
  }
}

inline void encode_dq_tensor_map(CUtensorMap* map, float* dq_accum, int64_t rows, int head_dim, int box_rows) {
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(head_dim), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(head_dim) * sizeof(float)};
  const cuuint32_t box[2] = {32, static_cast<cuuint32_t>(box_rows)};
  encode_tensor_map(map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 2, dq_accum, dims, strides, box, CU_TENSOR_MAP_SWIZZLE_128B,
                    "dQ accumulator");
}

}  // namespace flashflex::cuda
