// Public entry points: validate, then dispatch by device to the CPU reference (src/cpu/) or,
// in builds with CUDA, the CUDA backend (src/cuda/launch.hpp).
#include "flashflex/attention.hpp"

#include "api/validate.hpp"
#include "cpu/reference.hpp"
#ifndef FLASHFLEX_WITH_CUDA
#define FLASHFLEX_WITH_CUDA 0
#endif
#if FLASHFLEX_WITH_CUDA
#include "cuda/launch.hpp"
#endif

namespace flashflex {
namespace {

#if !FLASHFLEX_WITH_CUDA
[[noreturn]] void no_cuda_backend() {
  throw Error(ErrorKind::kUnsupported,
              "q: expected CPU tensors, got CUDA tensors (this build has no CUDA kernels; rebuild with nvcc)");
}
#endif

}  // namespace

const std::vector<int>& supported_head_dims() {
  static const std::vector<int> dims = {64, 128, 256};
  return dims;
}

bool has_cuda_backend() { return FLASHFLEX_WITH_CUDA != 0; }

std::size_t workspace_size(const ForwardArgs& args) {
  detail::validate_forward(args);
  return 0;  // the CPU reference allocates its own float64 scratch
}

std::size_t workspace_size(const BackwardArgs& args) {
  const detail::AttentionShape s = detail::validate_backward(args);
#if FLASHFLEX_WITH_CUDA
  if (s.device.type == DeviceType::kCuda) return cuda::backward_workspace_size(args);
#endif
  (void)s;
  return 0;
}

void forward(const ForwardArgs& args, Workspace /*workspace*/, void* stream) {
  const detail::AttentionShape s = detail::validate_forward(args);
  const double scale = detail::resolve_scale(args.scale, s.head_dim);
  if (s.device.type == DeviceType::kCpu) return cpu::reference_forward(args, scale);
#if FLASHFLEX_WITH_CUDA
  return cuda::forward(args, scale, stream);
#else
  (void)stream;
  no_cuda_backend();
#endif
}

void backward(const BackwardArgs& args, Workspace workspace, void* stream) {
  const detail::AttentionShape s = detail::validate_backward(args);
  const double scale = detail::resolve_scale(args.scale, s.head_dim);
  if (s.device.type == DeviceType::kCpu) return cpu::reference_backward(args, scale);
#if FLASHFLEX_WITH_CUDA
  return cuda::backward(args, scale, workspace, stream);
#else
  (void)workspace;
  (void)stream;
  no_cuda_backend();
#endif
}

}  // namespace flashflex
