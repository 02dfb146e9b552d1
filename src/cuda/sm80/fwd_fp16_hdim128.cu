// Instantiation group of the sm80 forward: fp16, head dim 128, every score mod (kernel_fwd.cuh).
#include "cuda/sm80/kernel_fwd.cuh"

namespace flashflex::sm80 {

template void launch_fwd<DType::kFloat16, 128, ScoreModKind::kNone>(const FwdParams&, void*);
template void launch_fwd<DType::kFloat16, 128, ScoreModKind::kSoftcap>(const FwdParams&, void*);
template void launch_fwd<DType::kFloat16, 128, ScoreModKind::kAlibi>(const FwdParams&, void*);
template void launch_fwd<DType::kFloat16, 128, ScoreModKind::kBias>(const FwdParams&, void*);

}  // namespace flashflex::sm80
