// Instantiation group of the sm80 forward: bf16, head dim 64, every score mod (kernel_fwd.cuh).
#include "cuda/sm80/kernel_fwd.cuh"

namespace flashflex::sm80 {

template void launch_fwd<DType::kBFloat16, 64, ScoreModKind::kNone>(const FwdParams&, void*);
template void launch_fwd<DType::kBFloat16, 64, ScoreModKind::kSoftcap>(const FwdParams&, void*);
template void launch_fwd<DType::kBFloat16, 64, ScoreModKind::kAlibi>(const FwdParams&, void*);
template void launch_fwd<DType::kBFloat16, 64, ScoreModKind::kBias>(const FwdParams&, void*);

}  // namespace flashflex::sm80
