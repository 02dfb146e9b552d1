// Public entry points of the GPU block-mask builder (include/flashflex/block_mask_cuda.hpp):
// argument checks, then the plan (src/cuda/mask/block_mask_plan.cpp, host only) and, in builds with
// CUDA, the kernels (src/cuda/mask/block_mask_device.cu).
#include "flashflex/block_mask_cuda.hpp"

#include <cstdint>
#include <string>

#include "api/validate_limits.hpp"
#include "cuda/mask/block_mask_device.hpp"
#include "flashflex/error.hpp"
#ifndef FLASHFLEX_WITH_CUDA
#define FLASHFLEX_WITH_CUDA 0
#endif

namespace flashflex {
namespace {

// The index limits (validate_limits.hpp) of the plan's layout: sequence lengths, and the tiles of
// the result (heads always 1, batch 1 unless the mask depends on the sample).
void check_limits(const Mask& mask, int64_t batch, int64_t q_len, int64_t kv_len) {
  constexpr const char* kWho = "build_block_mask_cuda";
  detail::check_seq_len(kWho, "q_len", q_len);
  detail::check_seq_len(kWho, "kv_len", kv_len);
  detail::check_mask_tiles(kWho, mask.depends_on_sample() ? batch : 1, 1, q_len, kv_len);
}

}  // namespace

BlockMaskCudaSize block_mask_cuda_size(const Mask& mask, int64_t batch, int64_t heads, int64_t q_len,
                                       int64_t kv_len) {
  batch = batch >= 1 ? detail::broadcast_batch(mask, batch) : batch;
  check_limits(mask, batch, q_len, kv_len);
  const cuda::DeviceBlockMaskPlan plan = cuda::plan_device_block_mask(mask, batch, heads, q_len, kv_len);
  return BlockMaskCudaSize{plan.bytes, plan.batch, plan.heads, plan.partial_capacity};
}

BlockMask build_block_mask_cuda(const Mask& mask, int64_t batch, int64_t heads, int64_t q_len, int64_t kv_len,
                                Workspace workspace, int device_index, void* stream) {
#if FLASHFLEX_WITH_CUDA
  batch = batch >= 1 ? detail::broadcast_batch(mask, batch) : batch;
  check_limits(mask, batch, q_len, kv_len);
  const cuda::DeviceBlockMaskPlan plan = cuda::plan_device_block_mask(mask, batch, heads, q_len, kv_len);
  if (workspace.data == nullptr || workspace.size < plan.bytes) {
    throw Error(ErrorKind::kInvalidArgument,
                "build_block_mask_cuda: expected a workspace of at least " + std::to_string(plan.bytes) +
                    " bytes (block_mask_cuda_size), got " + std::to_string(workspace.size) +
                    (workspace.data ? "" : " at a null pointer"));
  }
  if (device_index < 0) {
    throw Error(ErrorKind::kInvalidArgument,
                "build_block_mask_cuda: expected device_index >= 0, got " + std::to_string(device_index));
  }
  return cuda::build_device_block_mask(mask, plan, workspace.data, device_index, stream);
#else
  (void)mask, (void)batch, (void)heads, (void)q_len, (void)kv_len, (void)workspace, (void)device_index, (void)stream;
  throw Error(ErrorKind::kUnsupported,
              "build_block_mask_cuda: this build has no CUDA kernels (rebuild with nvcc); use build_block_mask");
#endif
}

}  // namespace flashflex
