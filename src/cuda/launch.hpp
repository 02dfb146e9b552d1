// Host entry points of the CUDA backend, called by src/api/attention.cpp after validation
// (same preconditions as src/cpu/reference.hpp, with every tensor on one CUDA device). Built
// only when the build has CUDA (FLASHFLEX_WITH_CUDA); nothing here includes CUDA headers. What
// the host composition shares beyond these (the row-local forward, the backward plan) is in
// composition.hpp.
#pragma once

#include <cstddef>

#include "flashflex/attention.hpp"

namespace flashflex::cuda {

// Forward: out and (optional) lse. `scale` is resolved; `stream` is a cudaStream_t. The sm90
// kernels take their dynamic tile order's counter from `workspace` (forward_workspace_size()
// bytes); an empty workspace gives them the static order.
constexpr std::size_t forward_workspace_size() { return 16; }
void forward(const ForwardArgs& args, double scale, Workspace workspace, void* stream);

// Backward: dq, dk, dv (dbias for the bias mod). Scratch (fp32 dQ accumulator, row statistics)
// comes from `workspace`, at least backward_workspace_size(args) bytes on the tensors' device.
std::size_t backward_workspace_size(const BackwardArgs& args);
void backward(const BackwardArgs& args, double scale, Workspace workspace, void* stream);

}  // namespace flashflex::cuda
