// Host entry points of the CUDA backend, called by src/api/attention.cpp after validation
// (same preconditions as src/cpu/reference.hpp, with every tensor on one CUDA device). Built
// only when the build has CUDA (FLASHFLEX_WITH_CUDA); nothing here includes CUDA headers.
#pragma once

#include <cstddef>

#include "cuda/sm80/row_limit.hpp"
#include "flashflex/attention.hpp"

namespace flashflex::sm80 {
struct RowLocalKeys;  // sm80/row_local.hpp
}

namespace flashflex::cuda {

// Forward: out and (optional) lse. `scale` is resolved; `stream` is a cudaStream_t.
// `row_local` (EAGLE3, src/cuda/eagle3.cu): diagonal keys folded in and rows past the valid
// length empty; bf16 / fp16 without a score mod only.
void forward(const ForwardArgs& args, double scale, void* stream, const sm80::RowLocalKeys* row_local = nullptr);

// What the backward's workspace holds once the block-sparse kernel has run: the row statistics
// and the fp32 dQ accumulator (unscaled), before dQ's conversion (sm80/params_bwd.hpp).
struct BackwardRowStats {
  float* dq_accum;
  const float* lse2;
  const float* dpsum;
  int q_len_pad;
};

// A pass run on the stream between the block-sparse kernel and dQ's conversion (EAGLE3's
// row-local keys, src/cuda/eagle3.cu), with the per-sample row limit of its problem: the
// block-sparse kernel skips the q tiles no row of which sees anything.
class BackwardRowPass {
 public:
  virtual void run(const BackwardRowStats& stats, void* stream) const = 0;
  virtual sm80::RowLimit row_limit() const = 0;

 protected:
  ~BackwardRowPass() = default;
};

// Backward: dq, dk, dv (dbias for the bias mod). Scratch (fp32 dQ accumulator, row statistics)
// comes from `workspace`, at least backward_workspace_size(args) bytes on the tensors' device.
std::size_t backward_workspace_size(const BackwardArgs& args);
void backward(const BackwardArgs& args, double scale, Workspace workspace, void* stream,
              const BackwardRowPass* row_pass = nullptr);

}  // namespace flashflex::cuda
