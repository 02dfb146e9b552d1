// Host side of the GPU block-mask build: per-sample data upload and the kernel launches of
// block_mask_kernels.cuh. Layout and capacity come from the plan (block_mask_plan.cpp).
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/mask/block_mask_device.hpp"
#include "cuda/mask/block_mask_kernels.cuh"
#include "cuda/mask/block_mask_program.hpp"
#include "cuda/cuda_check.hpp"
#include "cuda/launch_common.hpp"
#include "flashflex/error.hpp"

namespace flashflex::cuda {
namespace {

[[noreturn]] void invalid(const std::string& message) { throw Error(ErrorKind::kInvalidArgument, message); }

// The program and data placement of `mask` in `buffer`, checked against the plan.
DeviceMaskSetup checked_setup(const Mask& mask, const DeviceBlockMaskPlan& plan, void* buffer) {
  if (reinterpret_cast<std::uintptr_t>(buffer) % kDeviceAlignment != 0) {
    invalid("build_block_mask_cuda: expected a buffer aligned to " + std::to_string(kDeviceAlignment) + " bytes");
  }
  DeviceMaskSetup setup =
      setup_device_mask(mask, plan.batch, plan.q_len, plan.kv_len, plan.offsets.sample_data, buffer, false);
  if (setup.program.num_ops != plan.num_nodes || setup.sample_data_bytes != plan.sample_data_bytes) {
    invalid("build_block_mask_cuda: plan: expected a plan made by plan_device_block_mask for this mask");
  }
  return setup;
}

template <typename T>
T* at(void* buffer, std::size_t offset) {
  return reinterpret_cast<T*>(static_cast<unsigned char*>(buffer) + offset);
}

}  // namespace

void upload_device_mask_data(const Mask& mask, const DeviceBlockMaskPlan& plan, void* buffer, int device_index,
                             void* stream) {
  if (plan.sample_data_bytes == 0) return;
  const DeviceMaskSetup setup = checked_setup(mask, plan, buffer);
  // One copy of a packed host image: pageable H2D copies are staged by the driver before the
  // call returns, so the image may go out of scope right after.
  std::vector<unsigned char> image(plan.sample_data_bytes);
  for (const HostUpload& u : setup.uploads) {
    std::memcpy(image.data() + (u.offset - plan.offsets.sample_data), u.host, u.bytes);
  }
  DeviceGuard guard(device_index);
  FLASHFLEX_CUDA_CHECK(cudaMemcpyAsync(at<unsigned char>(buffer, plan.offsets.sample_data), image.data(),
                                       image.size(), cudaMemcpyHostToDevice, static_cast<cudaStream_t>(stream)));
}

BlockMask launch_device_block_mask(const Mask& mask, const DeviceBlockMaskPlan& plan, void* buffer,
                                   int device_index, void* stream) {
  const DeviceMaskSetup setup = checked_setup(mask, plan, buffer);
  const auto s = static_cast<cudaStream_t>(stream);
  DeviceGuard guard(device_index);

  mask_kernels::BuildParams p{};
  p.program = setup.program;
  p.q_len = plan.q_len;
  p.kv_len = plan.kv_len;
  p.mq = plan.num_q_tiles;
  p.n = plan.num_kv_tiles;
  p.rows = plan.batch * plan.num_q_tiles;
  p.capacity = plan.partial_capacity;
  const DeviceBlockMaskOffsets& o = plan.offsets;
  p.kv_num_blocks = at<int32_t>(buffer, o.kv_num_blocks);
  p.kv_indices = at<int32_t>(buffer, o.kv_indices);
  p.full_kv_num_blocks = at<int32_t>(buffer, o.full_kv_num_blocks);
  p.full_kv_indices = at<int32_t>(buffer, o.full_kv_indices);
  p.q_num_blocks = at<int32_t>(buffer, o.q_num_blocks);
  p.q_indices = at<int32_t>(buffer, o.q_indices);
  p.full_q_num_blocks = at<int32_t>(buffer, o.full_q_num_blocks);
  p.full_q_indices = at<int32_t>(buffer, o.full_q_indices);
  p.partial_tile_ids = at<int32_t>(buffer, o.partial_tile_ids);
  p.bitmaps = at<uint32_t>(buffer, o.bitmaps);
  p.tile_states = at<uint8_t>(buffer, o.tile_states);
  p.row_partials = at<int32_t>(buffer, o.row_partials);
  p.row_offsets = at<int32_t>(buffer, o.row_offsets);
  p.counters = at<int32_t>(buffer, o.counters);

  // The finished-rows counter starts at 0 (the last row CTA also leaves it at 0).
  FLASHFLEX_CUDA_CHECK(cudaMemsetAsync(p.counters, 0, sizeof(int32_t), s));
  for (const RangeJob& job : setup.range_jobs) {
    constexpr int kRangeThreads = 256;
    const int64_t warps = job.batch * num_tiles(job.len);
    const int64_t blocks = (warps * 32 + kRangeThreads - 1) / kRangeThreads;
    mask_kernels::tile_id_ranges_kernel<<<static_cast<unsigned>(blocks), kRangeThreads, 0, s>>>(
        at<int32_t>(buffer, job.ids_offset), at<flashflex::detail::IdRange>(buffer, job.ranges_offset), job.batch, job.len);
    FLASHFLEX_CUDA_CHECK(cudaGetLastError());
  }
  mask_kernels::classify_rows_kernel<<<static_cast<unsigned>(p.rows), mask_kernels::kThreads, 0, s>>>(p);
  FLASHFLEX_CUDA_CHECK(cudaGetLastError());
  const int64_t columns = plan.batch * plan.num_kv_tiles;
  const int64_t bitmap_ctas =
      (plan.partial_capacity + mask_kernels::kBitmapsPerCta - 1) / mask_kernels::kBitmapsPerCta;
  const int64_t column_ctas = (columns + mask_kernels::kColumnsPerCta - 1) / mask_kernels::kColumnsPerCta;
  mask_kernels::finish_kernel<<<static_cast<unsigned>(bitmap_ctas + column_ctas), mask_kernels::kThreads, 0, s>>>(
      p, bitmap_ctas);
  FLASHFLEX_CUDA_CHECK(cudaGetLastError());
  return device_block_mask_view(plan, buffer, device_index);
}

BlockMask build_device_block_mask(const Mask& mask, const DeviceBlockMaskPlan& plan, void* buffer,
                                  int device_index, void* stream) {
  upload_device_mask_data(mask, plan, buffer, device_index, stream);
  return launch_device_block_mask(mask, plan, buffer, device_index, stream);
}

}  // namespace flashflex::cuda
