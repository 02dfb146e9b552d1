// What the host composition (forward.cu, backward.cu, eagle3.cu) shares beyond the entry points of
// launch.hpp: the forward with EAGLE3's row-local keys, and the backward as a plan of passes that
// a caller runs in order on one stream, adding its own between main and post:
//
//   BackwardPlan plan = plan_backward(args, scale, workspace, rows);
//   run_backward_pre(plan, stream);    // memsets, dQ order (deterministic + mask), preprocess
//   run_backward_main(plan, stream);   // the block-sparse main kernel (kernel table, backward.cu)
//   ...                                // e.g. the row-local pass (eagle3.cu) on plan.params' stats
//   run_backward_post(plan, stream);   // dQ conversion, dK / dV of split groups, dbias
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/bwd/passes.hpp"
#include "cuda/params.hpp"
#include "flashflex/attention.hpp"

namespace flashflex::cuda {

// `row_local` (EAGLE3): diagonal keys folded in and rows past the valid length empty; 16-bit
// dtypes without a score mod only. `workspace` as launch.hpp's forward.
void forward(const ForwardArgs& args, double scale, Workspace workspace, void* stream, const RowLocalKeys* row_local);

using LaunchBwd = void (*)(const BwdParams&, void*);

struct BackwardPlan {
  BwdParams params;  // with the workspace arrays laid out (dq_accum, lse2, dpsum, ...)
  LaunchBwd main = nullptr;
  // A linked score mod (linked_kernel.hpp): its main kernel and launcher, instead of `main`.
  void (*main_linked)(const BwdParams&, const void*, void*) = nullptr;
  const void* linked_kernel = nullptr;
  const bwd::Passes* passes = nullptr;
  std::size_t dq_accum_bytes = 0, dbias_bytes = 0, semaphore_bytes = 0, rank_bytes = 0;
  int64_t dbias_elements = 0;  // 0: no dbias
};

// Validates what the kernels need, lays out `workspace` (at least backward_workspace_size(args)
// bytes) and picks the kernels; `rows`: the per-sample row limit (default: none). Launches nothing.
BackwardPlan plan_backward(const BackwardArgs& args, double scale, Workspace workspace, const RowLimit& rows = {});
void run_backward_pre(const BackwardPlan& plan, void* stream);
void run_backward_main(const BackwardPlan& plan, void* stream);
void run_backward_post(const BackwardPlan& plan, void* stream);

}  // namespace flashflex::cuda
