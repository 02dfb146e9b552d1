// The GPU block-mask builder: turns a built-in Mask into a BlockMask in device memory, with the
// tile lists and bitmaps laid out exactly as the CPU builder's (src/cpu/block_mask_builder.cpp):
// same lists, same order, same bitmaps. No CUDA headers here: plain C++ includes it.
//
// Two steps, so that a caller can size and allocate once and build many times:
//   plan_device_block_mask   host only, O(number of mask nodes) for masks without document ids
//                            (causal: a few integer operations), O(grid) for document masks;
//   build_device_block_mask  copies the mask's per-sample data (if any) into the buffer, then
//                            launches the kernels on `stream`.
//
// Partial tiles: the count is not known on the host (it depends on the bitmaps), so the plan
// reserves `partial_capacity` bitmaps, an analytic upper bound per mask kind (see
// block_mask_plan.cpp), and the returned BlockMask reports num_partial_tiles = partial_capacity.
// Ids 0..true_count-1 are used, in the CPU builder's order (row-major over (b, m, n)); bitmaps past
// the true count are left unwritten and no list refers to them. The true count is written to the
// device int32 at offset `partial_count` of the buffer (inspection and tests only).
//
// CUDA graphs: with no per-sample data (causal, sliding_window, eagle3 without lengths and their
// combinations) a build is one memset and two kernel launches: capturable, no host sync, no
// allocation. With per-sample data (document ids, prefix / padding / eagle3 lengths) the build
// first copies that data from the Mask's host vectors (pageable cudaMemcpyAsync): not
// capturable. launch_device_block_mask runs the kernels alone over data already uploaded by
// upload_device_mask_data, so that part can be captured (the data then stay those of the Mask
// that was uploaded).
#pragma once

#include <cstddef>
#include <cstdint>

#include "flashflex/block_mask.hpp"
#include "flashflex/mask.hpp"

namespace flashflex::cuda {

// Byte offsets of the arrays inside the buffer, each 256-byte aligned.
struct DeviceBlockMaskOffsets {
  // The BlockMask arrays (int32, the layout of include/flashflex/block_mask.hpp).
  std::size_t kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices;
  std::size_t q_num_blocks, q_indices, full_q_num_blocks, full_q_indices;
  std::size_t partial_tile_ids, bitmaps;
  // Scratch of the build.
  std::size_t tile_states;   // uint8 [batch, num_q_tiles, num_kv_tiles]: 0 empty, 1 partial, 2 full
  std::size_t row_partials;  // int32 [batch * num_q_tiles]: partial tiles of each q-tile row
  std::size_t row_offsets;   // int32 [batch * num_q_tiles]: first partial id of each row
  std::size_t counters;      // int32 [2]: rows finished (the last one scans), then 0; true count
  std::size_t partial_count; // = counters + 4: the true number of partial tiles
  std::size_t sample_data;   // the mask's per-sample data and document tile id ranges
};

struct DeviceBlockMaskPlan {
  // The BlockMask's shape: batch is 1 when the mask is the same for every sample, heads is
  // always 1 (only user predicates depend on the head, and they have no GPU builder).
  int64_t batch = 1, heads = 1;
  int64_t q_len = 0, kv_len = 0, num_q_tiles = 0, num_kv_tiles = 0;
  int64_t partial_capacity = 0;     // bitmaps reserved (= BlockMask::num_partial_tiles)
  std::size_t bytes = 0;            // device memory the build needs, from a 256-byte aligned base
  std::size_t sample_data_bytes = 0;  // bytes of per-sample data copied per build (0: none)
  int num_nodes = 0;                // nodes of the flattened mask tree
  DeviceBlockMaskOffsets offsets{};
};

// Checks the mask and the sizes (flashflex::Error as build_block_mask, kUnsupported for user
// predicates and for trees of more than kMaxMaskNodes nodes) and lays the buffer out.
DeviceBlockMaskPlan plan_device_block_mask(const Mask& mask, int64_t batch, int64_t heads, int64_t q_len,
                                           int64_t kv_len);

// Builds into `buffer` (device memory of plan.bytes, 256-byte aligned, on device `device_index`)
// on `stream` (a cudaStream_t); returns a view into the buffer. The plan must come from
// plan_device_block_mask with this very mask. upload + launch below.
BlockMask build_device_block_mask(const Mask& mask, const DeviceBlockMaskPlan& plan, void* buffer,
                                  int device_index, void* stream);

// The two halves of build_device_block_mask. upload: copies the per-sample data of `mask` into
// the buffer (pageable cudaMemcpyAsync; does nothing when plan.sample_data_bytes is 0). launch:
// the kernels alone (capturable), reading the data uploaded last into this buffer.
void upload_device_mask_data(const Mask& mask, const DeviceBlockMaskPlan& plan, void* buffer, int device_index,
                             void* stream);
BlockMask launch_device_block_mask(const Mask& mask, const DeviceBlockMaskPlan& plan, void* buffer,
                                   int device_index, void* stream);

// The BlockMask view of a built buffer (pointers only; no CUDA call).
BlockMask device_block_mask_view(const DeviceBlockMaskPlan& plan, void* buffer, int device_index);

}  // namespace flashflex::cuda
