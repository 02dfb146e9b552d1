// The one mapping from the API's 16-bit DType to the kernels' element type, used by every
// launcher and instantiation file.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "flashflex/tensor.hpp"

namespace flashflex::cuda {

template <DType kDType>
struct ElementOf;
template <>
struct ElementOf<DType::kBFloat16> {
  using type = __nv_bfloat16;
};
template <>
struct ElementOf<DType::kFloat16> {
  using type = __half;
};

template <DType kDType>
using element_t = typename ElementOf<kDType>::type;

}  // namespace flashflex::cuda
