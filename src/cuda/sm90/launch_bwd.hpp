// Host-side declaration of the sm_90a backward main-kernel launchers: one explicit instantiation
// per (dtype, head dim 64 / 128, score mod), defined in launch_bwd.cuh, instantiated in
// sm90/bwd_<dtype>_hdim<D>.cu and collected into the kernel table of src/cuda/backward.cu; and
// the plan-time test of what the TMA path cannot take. No device code here.
#pragma once

#include <cstdint>

#include "cuda/params.hpp"
#include "cuda/tma_map.hpp"
#include "flashflex/mods.hpp"
#include "flashflex/tensor.hpp"

namespace flashflex::sm90 {

// Launches the main kernel on `stream` (a cudaStream_t); checks the launch; never synchronizes.
template <DType kDType, int kHeadDim, ScoreModKind kMod>
void launch_bwd(const cuda::BwdParams& params, void* stream);

// The same with `kernel`, the bwd_kernel of ScoreModKind::kLinked for kDType and kHeadDim linked
// at run time (src/cuda/linked/sm90_bwd.cu, load_linked_kernel).
template <DType kDType, int kHeadDim>
void launch_bwd_linked(const cuda::BwdParams& params, const void* kernel, void* stream);

// Why the sm90 backward cannot take `p` (null: it can): a layout TMA cannot address, a bitmap
// array not 16-byte aligned, or sizes past its coordinates. With the automatic backend the plan
// then takes the sm80 kernel.
inline const char* bwd_unsupported(const cuda::BwdParams& p) {
  for (const cuda::TensorView* t : {&p.q, &p.k, &p.v, &p.dout}) {
    if (!cuda::tma_can_map(t->data, t->stride_t, t->stride_h, t->stride_b)) {
      return "q, k, v, dout: the sm90 backward needs 16-byte aligned data and strides (TMA)";
    }
  }
  if (p.mask.present && reinterpret_cast<std::uintptr_t>(p.mask.bitmaps) % 16 != 0) {
    return "block_mask: the sm90 backward needs 16-byte aligned bitmaps";
  }
  if (static_cast<int64_t>(p.batch) * p.q_heads * p.q_len_pad >= (int64_t{1} << 31)) {
    return "q: the sm90 backward needs batch * heads * padded length < 2^31";
  }
  if (!p.deterministic && p.num_kv_tiles > 65535) return "k: the sm90 backward supports at most 65535 kv tiles";
  if (p.deterministic && static_cast<int64_t>(p.kv_heads) * p.splits > 65535) {
    return "k: the deterministic sm90 backward supports at most 65535 kv heads x GQA splits";
  }
  return nullptr;
}

}  // namespace flashflex::sm90
