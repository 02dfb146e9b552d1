// Host entry points of the EAGLE3 CUDA path (src/cuda/eagle3.cu), called by src/api/eagle3.cpp
// after validate_eagle3.cpp, with every tensor on one CUDA device. Nothing here includes CUDA
// headers. `scale` is resolved; `stream` is a cudaStream_t; `workspace` is device memory of at
// least the matching *_workspace_size bytes, 256-byte aligned.
#pragma once

#include <cstddef>

#include "flashflex/eagle3.hpp"

namespace flashflex::cuda {

// Block 0's causal mask into mask.data (validated by the caller), on `stream`.
void build_eagle3_causal_mask(const Eagle3CausalMask& mask, void* stream);

std::size_t eagle3_forward_workspace_size(const Eagle3ForwardArgs& args);
void eagle3_forward(const Eagle3ForwardArgs& args, double scale, Workspace workspace, void* stream);

std::size_t eagle3_backward_workspace_size(const Eagle3BackwardArgs& args);
void eagle3_backward(const Eagle3BackwardArgs& args, double scale, Workspace workspace, void* stream);

}  // namespace flashflex::cuda
