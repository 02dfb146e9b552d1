// Host-side declaration of the sm_90a forward launchers: one explicit instantiation per
// (dtype, head dim, score mod, row-local variant), defined in launch_fwd.cuh, instantiated in
// sm90/fwd_<dtype>_hdim<D>.cu and collected into the kernel table of src/cuda/forward.cu. No
// device code here.
#pragma once

#include "cuda/params.hpp"
#include "flashflex/mods.hpp"
#include "flashflex/tensor.hpp"

namespace flashflex::sm90 {

// Launches the forward on `stream` (a cudaStream_t); checks the launch; never synchronizes.
// Throws Error(kUnsupported) for what the TMA path cannot express (pointers or strides TMA cannot
// address, a bitmap array not 16-byte aligned): with the automatic backend the caller then takes
// the sm80 path. kRowLocal (EAGLE3, no score mod): params.row_local's keys folded in.
template <DType kDType, int kHeadDim, ScoreModKind kMod, bool kRowLocal>
void launch_fwd(const cuda::FwdParams& params, void* stream);

// The same with `kernel`, the fwd_kernel of ScoreModKind::kLinked for kDType and kHeadDim linked
// at run time (src/cuda/linked/sm90_fwd.cu, load_linked_kernel).
template <DType kDType, int kHeadDim>
void launch_fwd_linked(const cuda::FwdParams& params, const void* kernel, void* stream);

}  // namespace flashflex::sm90
