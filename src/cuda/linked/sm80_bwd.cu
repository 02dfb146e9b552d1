// The sm80 backward main kernel with a run-time linked score mod (ScoreModKind::kLinked): compiled
// to LTO-IR of compute_80 only, like sm80_fwd.cu, per dtype and head dim; launched through
// sm80/launch_bwd.cuh's launcher, between the passes every backward shares (bwd/). The hook's
// gathered elements get their gradients through common/gather_grads.cuh.
#include "cuda/element_type.cuh"
#include "cuda/sm80/mainloop_bwd.cuh"

namespace flashflex::sm80 {

using LinkedBwdTraits = BwdTraits<cuda::element_t<DType::FLASHFLEX_LINKED_DTYPE>, FLASHFLEX_LINKED_HEAD_DIM>;

template __global__ void bwd_main_kernel<LinkedBwdTraits, ScoreModKind::kLinked>(const __grid_constant__ cuda::BwdParams);

}  // namespace flashflex::sm80
