// Host-side declaration of the sm80 forward launchers: one explicit instantiation per
// (dtype, head dim, score mod), defined in sm80/fwd_<dtype>_hdim<D>.cu (kernel_fwd.cuh) and
// collected into the dispatch table of src/cuda/forward.cu. No device code here.
#pragma once

#include "cuda/sm80/params_fwd.hpp"
#include "flashflex/mods.hpp"
#include "flashflex/tensor.hpp"

namespace flashflex::sm80 {

// Launches the forward on `stream` (a cudaStream_t); checks the launch; never synchronizes.
// Throws Error(kUnsupported) when the device lacks the shared memory the tile shape needs.
template <DType kDType, int kHeadDim, ScoreModKind kMod>
void launch_fwd(const FwdParams& params, void* stream);

// The EAGLE3 variant (no score mod): params.row_local's keys folded in, rows past the valid
// length empty (row_local_fwd.cuh). Instantiated in sm80/fwd_row_local_<dtype>.cu.
template <DType kDType, int kHeadDim>
void launch_fwd_row_local(const FwdParams& params, void* stream);

}  // namespace flashflex::sm80
