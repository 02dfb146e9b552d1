// EAGLE3 test-time-training (TTT) attention: the structured entry points.
//
// TTT step k has k + 1 key/value blocks K_0..K_k, V_0..V_k, each [B, Hkv, T, D] and each passed
// separately (never concatenated). Row q of sample b is valid iff q < L_b - k (L_b from
// seq_lengths; absent: L_b = T). A valid row sees
//   K_0[0..q]               causal over block 0, and
//   K_j[q] for 1 <= j <= k  one row-local ("diagonal") key per later block,
// all in one softmax of s = scale * q . k (no score mod). An invalid row gives out = 0,
// lse = -inf and zero gradients. This is generate_eagle3_mask of the customers' trainers over
// [K_0 | K_1 | ... | K_k], with their per-sample lengths minus k.
//
// Shapes (any strides in elements with innermost stride 1: [B, H, T, D] or [B, T, H, D] views):
//   q         [B, Hq, T, D]            k_blocks[j], v_blocks[j]  [B, Hkv, T, D]
//   out       [B, Hq, T, D]            lse  float32 [B, Hq, T] (natural log)
//   seq_lengths  int32 or int64 [B], on the tensors' device (values in [0, T])
// Hq must be a multiple of Hkv (any group size); dk_j / dv_j are summed over a group's heads.
#pragma once

#include <cstddef>
#include <optional>
#include <vector>

#include "flashflex/attention.hpp"
#include "flashflex/error.hpp"
#include "flashflex/tensor.hpp"

namespace flashflex {

// Block 0's causal BlockMask depends on T alone. A caller running many calls of one T (the steps
// of an unroll, forward and backward) builds it once with build_eagle3_causal_mask and passes it
// to each: those calls then neither build it nor need workspace for it. It is read on the calls'
// streams: it must be ready there (built on the same stream, or ordered before by an event).
struct Eagle3CausalMask {
  const void* data = nullptr;  // device memory written by build_eagle3_causal_mask
  std::size_t bytes = 0;
  int64_t seq_len = 0;         // the T it was built for
  Device device;
  bool defined() const { return data != nullptr; }
};

struct Eagle3ForwardArgs {
  TensorRef q;
  std::vector<TensorRef> k_blocks, v_blocks;  // k + 1 each, same shape, dtype and device
  TensorRef seq_lengths;                      // optional int32 / int64 [B]
  TensorRef out;                              // written
  TensorRef lse;                              // optional, written
  std::optional<double> scale;                // default 1 / sqrt(D)
  Backend backend = Backend::kAuto;           // attention.hpp
  Eagle3CausalMask causal_mask;               // optional (CUDA): block 0's mask, built for T
};

struct Eagle3BackwardArgs {
  TensorRef q;
  std::vector<TensorRef> k_blocks, v_blocks;
  TensorRef seq_lengths;                      // optional, as in the forward
  TensorRef out, dout;
  TensorRef lse;                              // float32 [B, Hq, T] from the forward (required; the
                                              // CPU reference recomputes it in float64 instead)
  TensorRef dlse;                             // optional float32 [B, Hq, T]: gradient w.r.t. lse
  TensorRef dq;                               // overwritten
  std::vector<TensorRef> dk_blocks, dv_blocks;  // one per block, overwritten (not accumulated)
  std::optional<double> scale;
  bool deterministic = false;                 // same bits on every run (the CPU path always is)
  Backend backend = Backend::kAuto;
  Eagle3CausalMask causal_mask;               // optional, as in the forward
};

// Device bytes of block 0's causal mask for sequence length `seq_len` (host only, every build).
std::size_t eagle3_causal_mask_size(int64_t seq_len);
// Builds it into `buffer` (at least eagle3_causal_mask_size bytes, 256-byte aligned, on CUDA
// device `device`) on `stream`: one memset and two kernels, capturable in a CUDA graph. Builds
// without CUDA and CPU devices throw kUnsupported.
Eagle3CausalMask build_eagle3_causal_mask(int64_t seq_len, Device device, Workspace buffer, void* stream);

std::size_t workspace_size(const Eagle3ForwardArgs& args);
std::size_t workspace_size(const Eagle3BackwardArgs& args);

// `stream` is a cudaStream_t for CUDA tensors; unused on the CPU. `workspace`: device memory of
// at least workspace_size(args) bytes for CUDA tensors (the causal BlockMask of block 0 is built
// there on the stream unless args.causal_mask holds it; then the forward's tile counter, or the
// backward's scratch). A forward with args.causal_mask and an empty workspace runs without one
// (the Hopper kernel's static tile order, as flashflex::forward).
// Arguments are validated before any work; a failure throws flashflex::Error. On CUDA,
// seq_lengths stay on the device and are not read by the host: a value outside [0, T] is clamped
// there (the CPU path rejects it). The CUDA path takes bfloat16 / float16, at most 16 blocks, and
// never synchronizes.
void eagle3_forward(const Eagle3ForwardArgs& args, Workspace workspace = {}, void* stream = nullptr);
void eagle3_backward(const Eagle3BackwardArgs& args, Workspace workspace = {}, void* stream = nullptr);

}  // namespace flashflex
