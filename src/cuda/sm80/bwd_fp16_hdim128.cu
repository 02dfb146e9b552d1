// Instantiation group of the sm80 backward main kernel: fp16, head dim 128, every score mod
// and the launcher of a linked score mod (launch_bwd.cuh); dispatched from src/cuda/backward.cu.
#include "cuda/sm80/launch_bwd.cuh"

namespace flashflex::sm80 {

template void launch_bwd_main<DType::kFloat16, 128, ScoreModKind::kNone>(const cuda::BwdParams&, void*);
template void launch_bwd_main<DType::kFloat16, 128, ScoreModKind::kSoftcap>(const cuda::BwdParams&, void*);
template void launch_bwd_main<DType::kFloat16, 128, ScoreModKind::kAlibi>(const cuda::BwdParams&, void*);
template void launch_bwd_main<DType::kFloat16, 128, ScoreModKind::kBias>(const cuda::BwdParams&, void*);
template void launch_bwd_linked<DType::kFloat16, 128>(const cuda::BwdParams&, const void*, void*);

}  // namespace flashflex::sm80
