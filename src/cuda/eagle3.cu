// Host side of the EAGLE3 CUDA path (include/flashflex/eagle3.hpp; src/cuda/launch_eagle3.hpp). TTT step k:
//   forward   causal BlockMask of block 0 built on the device into the workspace
//             (mask/block_mask_device.hpp) unless the caller passes it prebuilt, then the
//             block-sparse forward over (q, K_0, V_0) with the row-local keys K_1..K_k folded
//             into its softmax (common/row_local_fold.cuh);
//   backward  the same mask and the backward plan of block 0 (composition.hpp: dq, dK_0, dV_0)
//             with the forward's LSE (which includes the row-local keys); between its main kernel
//             and its post passes, the row-local pass writing dK_j, dV_j (bwd/row_local.cuh).
// Rows at or past L_b - k are empty in both (RowLocalKeys in cuda/params.hpp). The blocks are read
// where they are, through their strides: nothing is concatenated, nothing is copied between host
// and device.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "api/message.hpp"
#include "cuda/bwd/passes.hpp"
#include "cuda/composition.hpp"
#include "cuda/launch.hpp"
#include "cuda/launch_common.hpp"
#include "cuda/launch_eagle3.hpp"
#include "cuda/mask/block_mask_device.hpp"
#include "cuda/params.hpp"
#include "flashflex/mask.hpp"

namespace flashflex::cuda {
namespace {

constexpr std::size_t kAlign = 256;

std::size_t align_up(std::size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Block 0 is causal and the same for every sample and head: the padding of each sample is the
// row limit of the kernels, not a mask.
const Mask& causal_mask() {
  static const Mask mask = Mask::causal();
  return mask;
}

DeviceBlockMaskPlan mask_plan(const TensorRef& q) {
  return plan_device_block_mask(causal_mask(), 1, 1, q.sizes[2], q.sizes[2]);
}

// Workspace bytes the mask takes: none when the caller passes it prebuilt.
std::size_t mask_bytes(const Eagle3CausalMask& prebuilt, const DeviceBlockMaskPlan& plan) {
  return prebuilt.defined() ? 0 : align_up(plan.bytes);
}

// The prebuilt mask (validated against q's T and device by validate_eagle3.cpp), or one built
// into the workspace now.
BlockMask block0_mask(const Eagle3CausalMask& prebuilt, const DeviceBlockMaskPlan& plan, void* workspace,
                      int device_index, void* stream) {
  if (prebuilt.defined()) return device_block_mask_view(plan, const_cast<void*>(prebuilt.data), device_index);
  return build_device_block_mask(causal_mask(), plan, workspace, device_index, stream);
}

void check_blocks(const char* pass, const TensorRef& q, const std::vector<TensorRef>& k_blocks,
                  const std::vector<TensorRef>& v_blocks) {
  check_half_dtype(pass, q.dtype);
  check_rows_aligned("q", q);
  for (std::size_t j = 0; j < k_blocks.size(); ++j) {
    check_rows_aligned(flashflex::detail::concat("k_blocks[", j, "]").c_str(), k_blocks[j]);
    check_rows_aligned(flashflex::detail::concat("v_blocks[", j, "]").c_str(), v_blocks[j]);
  }
  const int64_t row_local = static_cast<int64_t>(k_blocks.size()) - 1;
  if (row_local > kMaxRowLocalBlocks) {
    throw Error(ErrorKind::kUnsupported,
                flashflex::detail::concat("k_blocks: the CUDA EAGLE3 path takes at most ", kMaxRowLocalBlocks + 1,
                                          " blocks (TTT step <= ", kMaxRowLocalBlocks, "), got ",
                                          k_blocks.size()));
  }
}

RowLimit row_limit(const TensorRef& seq_lengths, std::size_t num_blocks) {
  RowLimit limit;
  if (seq_lengths.defined()) {
    limit.lengths = seq_lengths.data;
    limit.lengths_stride = seq_lengths.strides[0];
    limit.lengths_int64 = seq_lengths.dtype == DType::kInt64;
  }
  limit.shift = static_cast<int>(num_blocks) - 1;
  return limit;
}

RowLocalKeys row_local_keys(const std::vector<TensorRef>& k_blocks, const std::vector<TensorRef>& v_blocks,
                                  const TensorRef& seq_lengths) {
  RowLocalKeys keys;
  keys.count = static_cast<int>(k_blocks.size()) - 1;
  for (int i = 0; i < keys.count; ++i) {
    keys.k[i] = strided_view(k_blocks[i + 1]);
    keys.v[i] = strided_view(v_blocks[i + 1]);
  }
  keys.limit = row_limit(seq_lengths, k_blocks.size());
  return keys;
}

void check_workspace(const Workspace& workspace, std::size_t needed) {
  if (workspace.size < needed || (needed > 0 && workspace.data == nullptr)) {
    throw Error(ErrorKind::kInvalidArgument,
                flashflex::detail::concat("workspace: expected at least ", needed,
                                          " bytes (eagle3 workspace_size), got ", workspace.size));
  }
  if (reinterpret_cast<std::uintptr_t>(workspace.data) % kAlign != 0) {
    throw Error(ErrorKind::kInvalidArgument, "workspace: expected a 256-byte aligned pointer (CUDA allocations are)");
  }
}

// Block 0's part of the backward, the BlockMask given (its sizes suffice for workspace_size).
BackwardArgs block0_backward_args(const Eagle3BackwardArgs& args, const BlockMask* mask) {
  BackwardArgs b;
  b.q = args.q;
  b.k = args.k_blocks[0];
  b.v = args.v_blocks[0];
  b.out = args.out;
  b.dout = args.dout;
  b.lse = args.lse;
  b.dlse = args.dlse;
  b.dq = args.dq;
  b.dk = args.dk_blocks[0];
  b.dv = args.dv_blocks[0];
  b.block_mask = mask;
  b.deterministic = args.deterministic;
  b.backend = args.backend;
  return b;
}

// ---- row-local backward pass -------------------------------------------------------------------

// The row-local pass's parameters but the row statistics, which come from the plan.
RowLocalBwdParams row_local_bwd_params(const Eagle3BackwardArgs& args, double scale, const BwdParams& block0) {
  const TensorRef& q = args.q;
  RowLocalBwdParams p;
  p.batch = static_cast<int>(q.sizes[0]);
  p.q_heads = static_cast<int>(q.sizes[1]);
  p.kv_heads = static_cast<int>(args.k_blocks[0].sizes[1]);
  p.group = p.q_heads / p.kv_heads;
  p.q_len = static_cast<int>(q.sizes[2]);
  p.q = strided_view(q);
  p.dout = strided_view(args.dout);
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * kLog2eDouble);
  p.keys = row_local_keys(args.k_blocks, args.v_blocks, args.seq_lengths);
  for (int i = 0; i < p.keys.count; ++i) {
    p.dk[i] = strided_view(args.dk_blocks[i + 1]);
    p.dv[i] = strided_view(args.dv_blocks[i + 1]);
  }
  p.dq_accum = block0.dq_accum;
  p.lse2 = block0.lse2;
  p.dpsum = block0.dpsum;
  p.q_len_pad = block0.q_len_pad;
  return p;
}

// Block 0's mask bytes, then the block-sparse backward's scratch (sized from the mask's shape).
struct BackwardLayout {
  DeviceBlockMaskPlan plan;
  std::size_t mask_bytes = 0;
  std::size_t total = 0;
};

BackwardLayout backward_layout(const Eagle3BackwardArgs& args) {
  BackwardLayout w;
  w.plan = mask_plan(args.q);
  w.mask_bytes = mask_bytes(args.causal_mask, w.plan);
  const BlockMask shape = device_block_mask_view(w.plan, nullptr, args.q.device.index);
  w.total = w.mask_bytes + backward_workspace_size(block0_backward_args(args, &shape));
  return w;
}

}  // namespace

void build_eagle3_causal_mask(const Eagle3CausalMask& mask, void* stream) {
  const DeviceBlockMaskPlan plan = plan_device_block_mask(causal_mask(), 1, 1, mask.seq_len, mask.seq_len);
  DeviceGuard guard(mask.device.index);
  build_device_block_mask(causal_mask(), plan, const_cast<void*>(mask.data), mask.device.index, stream);
}

// The forward's workspace: the mask's bytes (if built here), then the forward's own (tile counter).
std::size_t eagle3_forward_workspace_size(const Eagle3ForwardArgs& args) {
  return mask_bytes(args.causal_mask, mask_plan(args.q)) + align_up(forward_workspace_size());
}

void eagle3_forward(const Eagle3ForwardArgs& args, double scale, Workspace workspace, void* stream) {
  check_blocks("EAGLE3 forward", args.q, args.k_blocks, args.v_blocks);
  const DeviceBlockMaskPlan plan = mask_plan(args.q);
  const std::size_t mask_ws = mask_bytes(args.causal_mask, plan);
  // With a prebuilt mask and no workspace, the forward runs without one (its static tile order),
  // as the plain forward does; otherwise the workspace holds the mask, then the tile counter.
  const bool bare = mask_ws == 0 && workspace.data == nullptr && workspace.size == 0;
  if (!bare) check_workspace(workspace, mask_ws + align_up(forward_workspace_size()));
  const Workspace fwd_workspace =
      bare ? Workspace{} : Workspace{static_cast<unsigned char*>(workspace.data) + mask_ws, workspace.size - mask_ws};
  const RowLocalKeys keys = row_local_keys(args.k_blocks, args.v_blocks, args.seq_lengths);

  DeviceGuard guard(args.q.device.index);
  const BlockMask mask = block0_mask(args.causal_mask, plan, workspace.data, args.q.device.index, stream);
  ForwardArgs f;
  f.q = args.q;
  f.k = args.k_blocks[0];
  f.v = args.v_blocks[0];
  f.out = args.out;
  f.lse = args.lse;
  f.block_mask = &mask;
  f.backend = args.backend;
  forward(f, scale, fwd_workspace, stream, &keys);
}

std::size_t eagle3_backward_workspace_size(const Eagle3BackwardArgs& args) { return backward_layout(args).total; }

void eagle3_backward(const Eagle3BackwardArgs& args, double scale, Workspace workspace, void* stream) {
  check_blocks("EAGLE3 backward", args.q, args.k_blocks, args.v_blocks);
  for (std::size_t j = 0; j < args.dk_blocks.size(); ++j) {
    check_rows_aligned(flashflex::detail::concat("dk_blocks[", j, "]").c_str(), args.dk_blocks[j]);
    check_rows_aligned(flashflex::detail::concat("dv_blocks[", j, "]").c_str(), args.dv_blocks[j]);
  }
  const BackwardLayout w = backward_layout(args);
  check_workspace(workspace, w.total);
  const Workspace rest{static_cast<unsigned char*>(workspace.data) + w.mask_bytes, workspace.size - w.mask_bytes};
  // The plan reads only the mask's sizes: the device lists are built below, before any launch.
  void* mask_data = args.causal_mask.defined() ? const_cast<void*>(args.causal_mask.data) : workspace.data;
  const BlockMask shape = device_block_mask_view(w.plan, mask_data, args.q.device.index);
  const BackwardPlan plan = plan_backward(block0_backward_args(args, &shape), scale, rest,
                                          row_limit(args.seq_lengths, args.k_blocks.size()));
  const RowLocalBwdParams row_local = row_local_bwd_params(args, scale, plan.params);

  DeviceGuard guard(args.q.device.index);
  const BlockMask mask = block0_mask(args.causal_mask, w.plan, workspace.data, args.q.device.index, stream);
  (void)mask;  // plan.params' mask view points at the same arrays
  run_backward_pre(plan, stream);
  run_backward_main(plan, stream);
  if (row_local.keys.count > 0) plan.passes->row_local(row_local, stream);
  run_backward_post(plan, stream);
}

}  // namespace flashflex::cuda
