// Instantiation group of the sm80 forward: bf16, head dim 256, every score mod, the EAGLE3 row-local
// variant and the launcher of a linked score mod (launch_fwd.cuh); dispatched from src/cuda/forward.cu.
#include "cuda/sm80/launch_fwd.cuh"

namespace flashflex::sm80 {

template void launch_fwd<DType::kBFloat16, 256, ScoreModKind::kNone, false>(const cuda::FwdParams&, void*);
template void launch_fwd<DType::kBFloat16, 256, ScoreModKind::kSoftcap, false>(const cuda::FwdParams&, void*);
template void launch_fwd<DType::kBFloat16, 256, ScoreModKind::kAlibi, false>(const cuda::FwdParams&, void*);
template void launch_fwd<DType::kBFloat16, 256, ScoreModKind::kBias, false>(const cuda::FwdParams&, void*);
template void launch_fwd<DType::kBFloat16, 256, ScoreModKind::kNone, true>(const cuda::FwdParams&, void*);
template void launch_fwd_linked<DType::kBFloat16, 256>(const cuda::FwdParams&, const void*, void*);

}  // namespace flashflex::sm80
