// GPU block-mask builder: the BlockMask of a built-in Mask (causal, sliding_window, document,
// prefix_lm, padding, eagle3 and their & / |) built by CUDA kernels into caller-provided device
// memory, identical to build_block_mask's lists and bitmaps (mask.hpp). User predicates have no
// GPU builder (kUnsupported). Builds without CUDA throw kUnsupported from build_block_mask_cuda.
//
// The number of partial tiles is not known before the build, so the workspace holds room for an
// upper bound (`num_partial_tiles` below, the BlockMask's num_partial_tiles): ids
// 0..count-1 are used, in build_block_mask's order, and the bitmaps past the true count are
// neither written nor referenced by any list.
//
// CUDA graphs: a build of a mask without per-sample data (causal, sliding_window, eagle3
// without lengths and their combinations) is one memset and two kernels on `stream`, with no
// host synchronization and no allocation: capturable. Masks with per-sample data (document
// ids, prefix / padding / eagle3 lengths) copy them from host memory first (pageable
// cudaMemcpyAsync), which is not capturable.
#pragma once

#include <cstddef>
#include <cstdint>

#include "flashflex/attention.hpp"
#include "flashflex/block_mask.hpp"
#include "flashflex/mask.hpp"

namespace flashflex {

// What a GPU build of `mask` over (batch, heads, q_len, kv_len) needs and produces.
struct BlockMaskCudaSize {
  std::size_t workspace_bytes = 0;  // device memory, from a 256-byte aligned pointer
  int64_t batch = 1;                // the BlockMask's batch (1: the same for every sample)
  int64_t heads = 1;                // the BlockMask's heads (always 1 for built-in masks)
  int64_t num_partial_tiles = 0;    // bitmaps reserved: the bound described above
};

// Host only, no CUDA call; works in every build. Throws flashflex::Error as build_block_mask.
BlockMaskCudaSize block_mask_cuda_size(const Mask& mask, int64_t batch, int64_t heads, int64_t q_len,
                                       int64_t kv_len);

// Builds into `workspace` (at least block_mask_cuda_size(...).workspace_bytes on CUDA device
// `device_index`) on `stream` (a cudaStream_t; null: the legacy default stream) and returns a view
// into it: valid while the workspace is, ready once the stream reaches this point.
BlockMask build_block_mask_cuda(const Mask& mask, int64_t batch, int64_t heads, int64_t q_len, int64_t kv_len,
                                Workspace workspace, int device_index, void* stream);

}  // namespace flashflex
