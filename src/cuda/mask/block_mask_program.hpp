// The mask tree of a GPU build, flattened into a postfix program that travels in the kernel
// parameters (the device evaluates it with a small stack, no recursion), and the host-side
// setup that goes with it: which per-sample arrays are copied into the build's buffer and which
// document tile id ranges the device computes. Host and device; no CUDA headers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "flashflex/mask.hpp"
#include "mask/predicates.hpp"

namespace flashflex::cuda {

// Leaves and &/| operators of one mask: 16 nodes hold 8 leaves, more than any mask the
// customers combine; the kernel parameters stay well under the 4 KB limit.
inline constexpr int kMaxMaskNodes = 16;

enum class MaskOpKind : int32_t { kBand, kDocument, kPrefixLm, kPadding, kEagle3, kAnd, kOr };

// A document leaf: its predicate plus the per-tile id ranges (computed on the device).
struct DocumentLeaf {
  detail::DocumentPredicate predicate;
  const detail::IdRange* q_tile_ids;   // [batch, num_q_tiles]
  const detail::IdRange* kv_tile_ids;  // [batch, num_kv_tiles]
};

struct MaskOp {
  MaskOpKind kind;
  union {
    detail::BandPredicate band;
    DocumentLeaf document;
    detail::PrefixLmPredicate prefix_lm;
    detail::PaddingPredicate padding;
    detail::Eagle3Predicate eagle3;
  };
};

struct MaskProgram {
  int32_t num_ops = 0;
  MaskOp ops[kMaxMaskNodes];
};

// A host array copied into the buffer at `offset` before the kernels run.
struct HostUpload {
  const void* host;
  std::size_t bytes;
  std::size_t offset;
};

// Document tile id ranges to compute: for each of `batch` rows of `len` ids (`ids`, in the
// buffer), the IdRange of every kTileSize chunk into `ranges` (in the buffer).
struct RangeJob {
  std::size_t ids_offset;
  std::size_t ranges_offset;
  int64_t batch;
  int64_t len;
};

struct DeviceMaskSetup {
  MaskProgram program;
  std::vector<HostUpload> uploads;
  std::vector<RangeJob> range_jobs;
  std::size_t sample_data_bytes = 0;  // from the first byte of per-sample data, 256-aligned pieces
  int64_t partial_bound = 0;          // analytic bound on partial tiles over all samples
};

// Flattens `mask` for a build of `batch` samples (the BlockMask's batch) over q_len x kv_len,
// validating it (same messages as the CPU builder), with its per-sample data placed from
// `data_offset` of a buffer at `buffer` (null when only sizing: the pointers are then unused).
// partial_bound is computed only when `with_bound` (document masks count it from their ids).
DeviceMaskSetup setup_device_mask(const Mask& mask, int64_t batch, int64_t q_len, int64_t kv_len,
                                  std::size_t data_offset, void* buffer, bool with_bound);

inline constexpr std::size_t kDeviceAlignment = 256;
inline std::size_t align_up(std::size_t bytes) {
  return (bytes + kDeviceAlignment - 1) / kDeviceAlignment * kDeviceAlignment;
}

}  // namespace flashflex::cuda
