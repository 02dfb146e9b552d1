// Instantiation group of the sm80 forward: fp16, head dim 256, every score mod (kernel_fwd.cuh).
#include "cuda/sm80/kernel_fwd.cuh"

namespace flashflex::sm80 {

template void launch_fwd<DType::kFloat16, 256, ScoreModKind::kNone>(const FwdParams&, void*);
template void launch_fwd<DType::kFloat16, 256, ScoreModKind::kSoftcap>(const FwdParams&, void*);
template void launch_fwd<DType::kFloat16, 256, ScoreModKind::kAlibi>(const FwdParams&, void*);
template void launch_fwd<DType::kFloat16, 256, ScoreModKind::kBias>(const FwdParams&, void*);

}  // namespace flashflex::sm80
