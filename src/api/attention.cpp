// Public entry points: validate, then dispatch by device to the CPU reference (src/cpu/) or,
// in builds with CUDA, the CUDA backend (src/cuda/launch.hpp).
#include "flashflex/attention.hpp"

#include <iterator>

#include "api/dispatch.hpp"
#include "api/validate.hpp"
#include "cpu/reference.hpp"
#include "kernel_set.hpp"
#if FLASHFLEX_WITH_CUDA
#include "cuda/launch.hpp"
#endif

namespace flashflex {
const std::vector<int>& supported_head_dims() {
  static const std::vector<int> dims(std::begin(kKernelHeadDims), std::end(kKernelHeadDims));
  return dims;
}

bool has_cuda_backend() { return FLASHFLEX_WITH_CUDA != 0; }

std::size_t workspace_size(const ForwardArgs& args) {
  [[maybe_unused]] const detail::AttentionShape s = detail::validate_forward(args);
#if FLASHFLEX_WITH_CUDA
  if (s.device.type == DeviceType::kCuda) return cuda::forward_workspace_size();
#endif
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

void forward(const ForwardArgs& args, [[maybe_unused]] Workspace workspace, [[maybe_unused]] void* stream) {
  const detail::AttentionShape s = detail::validate_forward(args);
  const double scale = detail::resolve_scale(args.scale, s.head_dim);
  detail::on_device(s.device, [&] { cpu::reference_forward(args, scale); },
                    FLASHFLEX_CUDA_CALL(cuda::forward(args, scale, workspace, stream)));
}

void backward(const BackwardArgs& args, [[maybe_unused]] Workspace workspace, [[maybe_unused]] void* stream) {
  const detail::AttentionShape s = detail::validate_backward(args);
  const double scale = detail::resolve_scale(args.scale, s.head_dim);
  detail::on_device(s.device, [&] { cpu::reference_backward(args, scale); },
                    FLASHFLEX_CUDA_CALL(cuda::backward(args, scale, workspace, stream)));
}

}  // namespace flashflex
