// EAGLE3 entry points (include/flashflex/eagle3.hpp): validate (validate_eagle3.cpp), then
// dispatch by device to the CPU reference (src/cpu/reference_eagle3.cpp). CUDA tensors are
// rejected until the EAGLE3 kernel (a causal mainloop with the row-local keys folded into its
// online softmax, KERNEL_NOTES.md section 5) is built.
#include "flashflex/eagle3.hpp"

#include "api/validate_eagle3.hpp"
#include "cpu/reference_eagle3.hpp"

namespace flashflex {
namespace {

[[noreturn]] void no_eagle3_kernel() {
  throw Error(ErrorKind::kUnsupported,
              "q: expected CPU tensors, got CUDA tensors (the EAGLE3 CUDA kernel is not built yet)");
}

}  // namespace

std::size_t workspace_size(const Eagle3ForwardArgs& args) {
  detail::validate_eagle3_forward(args);
  return 0;  // the CPU reference allocates its own float64 scratch
}

std::size_t workspace_size(const Eagle3BackwardArgs& args) {
  detail::validate_eagle3_backward(args);
  return 0;
}

void eagle3_forward(const Eagle3ForwardArgs& args, Workspace /*workspace*/, void* /*stream*/) {
  const detail::Eagle3Shape s = detail::validate_eagle3_forward(args);
  if (s.device.type != DeviceType::kCpu) no_eagle3_kernel();
  cpu::reference_eagle3_forward(args, detail::resolve_scale(args.scale, s.head_dim));
}

void eagle3_backward(const Eagle3BackwardArgs& args, Workspace /*workspace*/, void* /*stream*/) {
  const detail::Eagle3Shape s = detail::validate_eagle3_backward(args);
  if (s.device.type != DeviceType::kCpu) no_eagle3_kernel();
  cpu::reference_eagle3_backward(args, detail::resolve_scale(args.scale, s.head_dim));
}

}  // namespace flashflex
