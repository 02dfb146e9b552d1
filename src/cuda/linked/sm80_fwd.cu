// The sm80 forward kernel with a run-time linked score mod (ScoreModKind::kLinked): compiled to
// LTO-IR of compute_80 only, never into the library, once per dtype and head dim
// (FLASHFLEX_LINKED_DTYPE, FLASHFLEX_LINKED_HEAD_DIM; CMakeLists.txt). python/flashflex/
// _score_mod_link.py links it with a generated flashflex_score_mod into a cubin for the GPU at
// hand (any from Ampere on); the library launches that cubin's only kernel through
// sm80/launch_fwd.cuh's launcher (load_linked_kernel, linked_kernel.hpp).
#include "cuda/element_type.cuh"
#include "cuda/sm80/kernel_fwd.cuh"

namespace flashflex::sm80 {

using LinkedFwdTraits = typename FwdConfig<cuda::element_t<DType::FLASHFLEX_LINKED_DTYPE>, FLASHFLEX_LINKED_HEAD_DIM,
                                           ScoreModKind::kLinked>::Traits;

template __global__ void fwd_kernel<LinkedFwdTraits, ScoreModKind::kLinked, false>(
    const __grid_constant__ cuda::FwdParams);

}  // namespace flashflex::sm80
