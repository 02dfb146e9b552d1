// Device dispatch of the public entry points (attention.cpp, eagle3.cpp): CPU tensors go to the
// reference, CUDA tensors to the CUDA backend, which builds without CUDA do not have:
//
//   on_device(s.device, [&] { cpu::reference_forward(args, scale); },
//             FLASHFLEX_CUDA_CALL(cuda::forward(args, scale, workspace, stream)));
//
// FLASHFLEX_CUDA_CALL(expr) is a callable evaluating expr in CUDA builds, and one that throws
// "this build has no CUDA kernels" otherwise (expr is then never compiled).
#pragma once

#include "flashflex/error.hpp"
#include "flashflex/tensor.hpp"

#ifndef FLASHFLEX_WITH_CUDA
#define FLASHFLEX_WITH_CUDA 0
#endif

namespace flashflex::detail {

[[noreturn]] inline void no_cuda_backend() {
  throw Error(ErrorKind::kUnsupported,
              "q: expected CPU tensors, got CUDA tensors (this build has no CUDA kernels; rebuild with nvcc)");
}

// cpu and cuda: callables returning void.
template <class Cpu, class Cuda>
void on_device(const Device& device, Cpu&& cpu, Cuda&& cuda) {
  if (device.type == DeviceType::kCpu) return cpu();
  cuda();
}

}  // namespace flashflex::detail

#if FLASHFLEX_WITH_CUDA
#define FLASHFLEX_CUDA_CALL(expr) [&] { return expr; }
#else
#define FLASHFLEX_CUDA_CALL(expr) [&] { ::flashflex::detail::no_cuda_backend(); }
#endif
