// The attention entry points: forward, backward and their workspace sizes.
//
// Shapes (sizes in this order; any strides in elements, innermost stride 1, so both the
// [B, H, T, D] layout of flex attention and the [B, T, H, D] layout of FlashAttention work):
//   q    [B, Hq,  Q_LEN,  D]      k [B, Hkv, KV_LEN, D]      v [B, Hkv, KV_LEN, Dv]
//   out  [B, Hq,  Q_LEN,  Dv]     lse float32 [B, Hq, Q_LEN] (natural log)
// Hq must be a multiple of Hkv (grouped-query attention, any ratio). Q_LEN may differ from
// KV_LEN. A fully masked row gives out = 0, lse = -inf and zero gradients; so does a row whose
// visible scores are all -inf after the score mod (a -inf bias counts as masked).
#pragma once

#include <cstddef>
#include <optional>
#include <vector>

#include "flashflex/block_mask.hpp"
#include "flashflex/error.hpp"
#include "flashflex/mods.hpp"
#include "flashflex/tensor.hpp"

namespace flashflex {

// Which CUDA kernels serve a call: kAuto, the Hopper kernels (sm90: wgmma, TMA) on compute
// capability 9.x where the build has them for the call's dtype, head dim and score mod, else the
// portable sm80 kernels (mma.sync); kSm80 or kSm90 force one (kSm90 where it cannot run is an
// Error of kind kUnsupported). Ignored for CPU tensors.
enum class Backend { kAuto, kSm80, kSm90 };

struct ForwardArgs {
  TensorRef q, k, v;
  TensorRef out;                    // written
  TensorRef lse;                    // optional, written
  std::optional<double> scale;      // default 1 / sqrt(D)
  ScoreMod score_mod;
  const BlockMask* block_mask = nullptr;  // null: every key visible
  Backend backend = Backend::kAuto;
};

struct BackwardArgs {
  TensorRef q, k, v, out, dout;
  TensorRef lse;                    // float32 [B, Hq, Q_LEN], from the forward (required; the
                                    // CPU reference recomputes it in float64 instead of reading it)
  TensorRef dlse;                   // optional float32 [B, Hq, Q_LEN]: gradient w.r.t. lse
  TensorRef dq, dk, dv;             // overwritten (not accumulated); dk, dv summed over the query
                                    // heads of a group
  TensorRef dbias;                  // optional (kBias only), the bias's shape: overwritten, summed
                                    // over the bias's size-1 (broadcast) dims
  std::optional<double> scale;
  ScoreMod score_mod;
  const BlockMask* block_mask = nullptr;
  bool deterministic = false;       // same bits on every run (the CPU path always is)
  Backend backend = Backend::kAuto;
};

// Caller-owned scratch memory on the tensors' device, at least workspace_size() bytes. The
// backward on CUDA needs it. The forward on CUDA uses it for the Hopper kernels' dynamic tile
// order (a counter zeroed on the call's stream), so calls that may run at the same time (on
// several streams, or beside CUDA-graph replays) each need their own; an empty workspace gives
// those kernels a static order, slower on document masks.
struct Workspace {
  void* data = nullptr;
  std::size_t size = 0;
};

std::size_t workspace_size(const ForwardArgs& args);
std::size_t workspace_size(const BackwardArgs& args);

// `stream` is a cudaStream_t for CUDA tensors (null: the default stream); unused on the CPU.
// Arguments are validated before any work; a failure throws flashflex::Error.
void forward(const ForwardArgs& args, Workspace workspace = {}, void* stream = nullptr);
void backward(const BackwardArgs& args, Workspace workspace = {}, void* stream = nullptr);

// Head dims with a compiled path (D == Dv).
const std::vector<int>& supported_head_dims();

// Whether this build has the CUDA kernels (otherwise CUDA tensors are rejected).
bool has_cuda_backend();

}  // namespace flashflex
