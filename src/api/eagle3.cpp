// EAGLE3 entry points (include/flashflex/eagle3.hpp): validate (validate_eagle3.cpp), then
// dispatch by device to the CPU reference (src/cpu/reference_eagle3.cpp) or, in builds with
// CUDA, the CUDA path (src/cuda/launch_eagle3.hpp: the block-sparse causal kernels over block 0
// with the row-local keys folded in).
#include "flashflex/eagle3.hpp"

#include "api/dispatch.hpp"
#include "api/message.hpp"
#include "api/validate_eagle3.hpp"
#include "cpu/reference_eagle3.hpp"
#include "cuda/mask/block_mask_device.hpp"
#if FLASHFLEX_WITH_CUDA
#include "cuda/launch_eagle3.hpp"
#endif

namespace flashflex {

std::size_t eagle3_causal_mask_size(int64_t seq_len) {
  if (seq_len <= 0) {
    throw Error(ErrorKind::kInvalidArgument, detail::concat("seq_len: expected a positive length, got ", seq_len));
  }
  return cuda::plan_device_block_mask(Mask::causal(), 1, 1, seq_len, seq_len).bytes;
}

Eagle3CausalMask build_eagle3_causal_mask(int64_t seq_len, Device device, Workspace buffer,
                                          [[maybe_unused]] void* stream) {
  const std::size_t needed = eagle3_causal_mask_size(seq_len);
  if (device.type != DeviceType::kCuda) {
    throw Error(ErrorKind::kUnsupported, "device: the EAGLE3 causal mask is built on CUDA devices only (the CPU "
                                         "reference needs none)");
  }
  if (buffer.size < needed || buffer.data == nullptr) {
    throw Error(ErrorKind::kInvalidArgument, detail::concat("buffer: expected at least ", needed,
                                                            " bytes (eagle3_causal_mask_size), got ", buffer.size));
  }
  Eagle3CausalMask mask;
  mask.data = buffer.data;
  mask.bytes = buffer.size;
  mask.seq_len = seq_len;
  mask.device = device;
  detail::on_device(device, [] {}, FLASHFLEX_CUDA_CALL(cuda::build_eagle3_causal_mask(mask, stream)));
  return mask;
}

std::size_t workspace_size(const Eagle3ForwardArgs& args) {
  const detail::Eagle3Shape s = detail::validate_eagle3_forward(args);
#if FLASHFLEX_WITH_CUDA
  if (s.device.type == DeviceType::kCuda) return cuda::eagle3_forward_workspace_size(args);
#endif
  (void)s;
  return 0;  // the CPU reference allocates its own float64 scratch
}

std::size_t workspace_size(const Eagle3BackwardArgs& args) {
  const detail::Eagle3Shape s = detail::validate_eagle3_backward(args);
#if FLASHFLEX_WITH_CUDA
  if (s.device.type == DeviceType::kCuda) return cuda::eagle3_backward_workspace_size(args);
#endif
  (void)s;
  return 0;
}

void eagle3_forward(const Eagle3ForwardArgs& args, [[maybe_unused]] Workspace workspace,
                    [[maybe_unused]] void* stream) {
  const detail::Eagle3Shape s = detail::validate_eagle3_forward(args);
  const double scale = detail::resolve_scale(args.scale, s.head_dim);
  detail::on_device(s.device, [&] { cpu::reference_eagle3_forward(args, scale); },
                    FLASHFLEX_CUDA_CALL(cuda::eagle3_forward(args, scale, workspace, stream)));
}

void eagle3_backward(const Eagle3BackwardArgs& args, [[maybe_unused]] Workspace workspace,
                     [[maybe_unused]] void* stream) {
  const detail::Eagle3Shape s = detail::validate_eagle3_backward(args);
  const double scale = detail::resolve_scale(args.scale, s.head_dim);
  detail::on_device(s.device, [&] { cpu::reference_eagle3_backward(args, scale); },
                    FLASHFLEX_CUDA_CALL(cuda::eagle3_backward(args, scale, workspace, stream)));
}

}  // namespace flashflex
