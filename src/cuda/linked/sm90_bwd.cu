// The sm_90a backward main kernel with a run-time linked score mod (ScoreModKind::kLinked):
// LTO-IR only, once per dtype and head dim 64 / 128 (FLASHFLEX_LINKED_DTYPE,
// FLASHFLEX_LINKED_HEAD_DIM; CMakeLists.txt), linked with the generated hook like sm90_fwd.cu and
// launched through sm90/launch_bwd.cuh's launcher. The hook gives the score's derivative and its
// gathers' partials: dS, and the gradients of captured tensors (kernel_bwd.cuh).
#include "cuda/element_type.cuh"
#include "cuda/sm90/kernel_bwd.cuh"

namespace flashflex::sm90 {

using LinkedBwdTraits =
    typename BwdConfig<cuda::element_t<DType::FLASHFLEX_LINKED_DTYPE>, FLASHFLEX_LINKED_HEAD_DIM>::Traits;

template __global__ void bwd_kernel<LinkedBwdTraits, ScoreModKind::kLinked>(
    const __grid_constant__ cuda::BwdParams, const __grid_constant__ CUtensorMap, const __grid_constant__ CUtensorMap,
    const __grid_constant__ CUtensorMap, const __grid_constant__ CUtensorMap);

}  // namespace flashflex::sm90
