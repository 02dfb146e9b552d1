// The backward's passes that are not mainloops, shared by every architecture's main kernel, with
// their own table over (dtype, head dim) (bwd/passes.cu). In the order a backward plan runs them
// (composition.hpp):
//   dq_order     deterministic mode with a block mask: the dQ turn of each kv tile (dq_order.cuh)
//   preprocess   LSE2 and dpsum per query row (preprocess.cuh)
//   [main kernel, then the caller's extra passes: EAGLE3's row_local (row_local.cuh)]
//   convert_dq   dq = dQacc * scale; reduce_dkv: dk, dv of split GQA groups; convert_dbias (convert.cuh)
// Nothing here includes CUDA headers; `stream` is a cudaStream_t.
#pragma once

#include <cstdint>

#include "cuda/params.hpp"
#include "flashflex/tensor.hpp"

namespace flashflex::bwd {

using LaunchPass = void (*)(const cuda::BwdParams&, void* stream);
using LaunchRowLocal = void (*)(const cuda::RowLocalBwdParams&, void* stream);

struct Passes {
  LaunchPass preprocess;
  LaunchPass convert_dq;
  LaunchPass reduce_dkv;
  LaunchRowLocal row_local;
};

// Throws Error(kUnsupported) naming the dtype and head dim when none was built.
const Passes& find_passes(DType dtype, int head_dim);

void launch_dq_order(const cuda::BwdParams& p, void* stream);

// The dbias conversion over `elements` elements of dbias; dbias_convert_blocks checks its grid
// (Error(kUnsupported) when it cannot be launched) and is called before any work.
int64_t dbias_convert_blocks(int64_t elements);
void launch_convert_dbias(const cuda::BwdParams& p, int64_t elements, void* stream);

}  // namespace flashflex::bwd
