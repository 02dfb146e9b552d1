// FLASHFLEX_CUDA_CHECK(expr): runs a CUDA runtime call and throws flashflex::Error(kCuda,
// "<call> failed at <file>:<line>: <CUDA's text>") when it does not return cudaSuccess. Every
// runtime call and every launch of the CUDA backend goes through it (after a launch:
// FLASHFLEX_CUDA_CHECK(cudaGetLastError())). Nothing exits, nothing synchronizes.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "flashflex/error.hpp"

namespace flashflex::cuda::detail {

[[noreturn]] inline void throw_cuda_error(cudaError_t status, const char* call, const char* file, int line) {
  throw Error(ErrorKind::kCuda, std::string(call) + " failed at " + file + ":" + std::to_string(line) + ": " +
                                    cudaGetErrorString(status));
}

}  // namespace flashflex::cuda::detail

#define FLASHFLEX_CUDA_CHECK(expr)                                                          \
  do {                                                                                      \
    const cudaError_t flashflex_cuda_status_ = (expr);                                      \
    if (flashflex_cuda_status_ != cudaSuccess) {                                            \
      ::flashflex::cuda::detail::throw_cuda_error(flashflex_cuda_status_, #expr, __FILE__, __LINE__); \
    }                                                                                       \
  } while (0)
