// Instantiation group of the sm80 backward main kernel: bf16, head dim 256, every score mod
// and the launcher of a linked score mod (launch_bwd.cuh); dispatched from src/cuda/backward.cu.
#include "cuda/sm80/launch_bwd.cuh"

namespace flashflex::sm80 {

template void launch_bwd_main<DType::kBFloat16, 256, ScoreModKind::kNone>(const cuda::BwdParams&, void*);
template void launch_bwd_main<DType::kBFloat16, 256, ScoreModKind::kSoftcap>(const cuda::BwdParams&, void*);
template void launch_bwd_main<DType::kBFloat16, 256, ScoreModKind::kAlibi>(const cuda::BwdParams&, void*);
template void launch_bwd_main<DType::kBFloat16, 256, ScoreModKind::kBias>(const cuda::BwdParams&, void*);
template void launch_bwd_linked<DType::kBFloat16, 256>(const cuda::BwdParams&, const void*, void*);

}  // namespace flashflex::sm80
