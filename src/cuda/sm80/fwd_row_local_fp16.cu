// Instantiation group of the sm80 forward with the EAGLE3 row-local keys: fp16, every head dim
// (kernel_fwd.cuh, row_local_fwd.cuh).
#include "cuda/sm80/kernel_fwd.cuh"

namespace flashflex::sm80 {

template void launch_fwd_row_local<DType::kFloat16, 64>(const FwdParams&, void*);
template void launch_fwd_row_local<DType::kFloat16, 128>(const FwdParams&, void*);
template void launch_fwd_row_local<DType::kFloat16, 256>(const FwdParams&, void*);

}  // namespace flashflex::sm80
