// Host-side declaration of the sm80 forward launchers: one explicit instantiation per
// (dtype, head dim, score mod, row-local variant), defined in launch_fwd.cuh, instantiated in
// sm80/fwd_<dtype>_hdim<D>.cu and collected into the kernel table of src/cuda/forward.cu. No device
// code here.
#pragma once

#include "cuda/params.hpp"
#include "flashflex/mods.hpp"
#include "flashflex/tensor.hpp"

namespace flashflex::sm80 {

// Launches the forward on `stream` (a cudaStream_t); checks the launch; never synchronizes.
// Throws Error(kUnsupported) when the device lacks the shared memory the tile shape needs.
// kRowLocal (EAGLE3, no score mod): params.row_local's keys folded in, rows past the valid length
// empty (common/row_local_fold.cuh).
template <DType kDType, int kHeadDim, ScoreModKind kMod, bool kRowLocal>
void launch_fwd(const cuda::FwdParams& params, void* stream);

// The same with `kernel`, the fwd_kernel of ScoreModKind::kLinked for kDType and kHeadDim linked
// at run time (src/cuda/linked/sm80_fwd.cu, load_linked_kernel).
template <DType kDType, int kHeadDim>
void launch_fwd_linked(const cuda::FwdParams& params, const void* kernel, void* stream);

}  // namespace flashflex::sm80
