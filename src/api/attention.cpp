// Public entry points: validate, then dispatch to a backend (today: the CPU reference; the CUDA
// kernels of src/cuda/ plug in here by device).
#include "flashflex/attention.hpp"

#include "api/validate.hpp"
#include "cpu/reference.hpp"

namespace flashflex {
namespace {

[[noreturn]] void no_cuda_backend() {
  throw Error(ErrorKind::kUnsupported,
              "q: expected CPU tensors, got CUDA tensors (this build has no CUDA kernels yet)");
}

}  // namespace

const std::vector<int>& supported_head_dims() {
  static const std::vector<int> dims = {64, 128, 256};
  return dims;
}

std::size_t workspace_size(const ForwardArgs& args) {
  detail::validate_forward(args);
  return 0;  // the CPU reference allocates its own float64 scratch
}

std::size_t workspace_size(const BackwardArgs& args) {
  detail::validate_backward(args);
  return 0;
}

void forward(const ForwardArgs& args, Workspace /*workspace*/, void* /*stream*/) {
  const detail::AttentionShape s = detail::validate_forward(args);
  if (s.device.type != DeviceType::kCpu) no_cuda_backend();
  cpu::reference_forward(args, detail::resolve_scale(args.scale, s.head_dim));
}

void backward(const BackwardArgs& args, Workspace /*workspace*/, void* /*stream*/) {
  const detail::AttentionShape s = detail::validate_backward(args);
  if (s.device.type != DeviceType::kCpu) no_cuda_backend();
  cpu::reference_backward(args, detail::resolve_scale(args.scale, s.head_dim));
}

}  // namespace flashflex
