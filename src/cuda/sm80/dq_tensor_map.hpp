// The tensor map through which the sm_90 copy engine adds the backward's dQ tiles into the fp32
// accumulator (mainloop_bwd.cuh, BwdParams::dq_bulk): the 2-d view [rows, head_dim] of dq_accum,
// boxes of box_rows x 32 columns, 128-byte swizzle. Encoded on the host for every call (the
// workspace moves); the driver's encoder is looked up once through the runtime, so nothing links
// against the driver library.
#pragma once

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "cuda/cuda_check.hpp"
#include "flashflex/error.hpp"

namespace flashflex::sm80 {

inline void encode_dq_tensor_map(CUtensorMap* map, float* dq_accum, int64_t rows, int head_dim, int box_rows) {
  using Encode = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                              const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                              CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
  static Encode encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    FLASHFLEX_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault,
                                                          &found));
    if (found != cudaDriverEntryPointSuccess || fn == nullptr) {
      throw Error(ErrorKind::kCuda, "cuTensorMapEncodeTiled: not found in the CUDA driver (the sm_90 backward needs it)");
    }
    return reinterpret_cast<Encode>(fn);
  }();
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(head_dim), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(head_dim) * sizeof(float)};
  const cuuint32_t box[2] = {32, static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult status = encode(map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 2, dq_accum, dims, strides, box,
                                 element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                 CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (status != CUDA_SUCCESS) {
    throw Error(ErrorKind::kCuda, "cuTensorMapEncodeTiled (dQ accumulator, " + std::to_string(rows) + " x " +
                                      std::to_string(head_dim) + ") failed with CUresult " + std::to_string(status));
  }
}

}  // namespace flashflex::sm80
