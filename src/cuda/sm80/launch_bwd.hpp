// Host-side declaration of the sm80 backward main-kernel launchers: one explicit instantiation per
// (dtype, head dim, score mod), defined in launch_bwd.cuh and instantiated in
// sm80/bwd_<dtype>_hdim<D>.cu (four score mods each), collected into the kernel table of
// src/cuda/backward.cu. No device code here.
#pragma once

#include "cuda/params.hpp"
#include "flashflex/mods.hpp"
#include "flashflex/tensor.hpp"

namespace flashflex::sm80 {

// Launches mainloop_bwd.cuh's kernel on `stream` (a cudaStream_t) over (kv tiles, kv heads x
// group splits, batch); checks the launch; never synchronizes. Throws Error(kUnsupported) when the
// device lacks the shared memory of the tile shape.
template <DType kDType, int kHeadDim, ScoreModKind kMod>
void launch_bwd_main(const cuda::BwdParams& params, void* stream);

// The same with `kernel`, the bwd_main_kernel of ScoreModKind::kLinked for kDType and kHeadDim
// linked at run time (src/cuda/linked/sm80_bwd.cu, load_linked_kernel).
template <DType kDType, int kHeadDim>
void launch_bwd_linked(const cuda::BwdParams& params, const void* kernel, void* stream);

// Keys per CTA of the main kernel at `head_dim` (kernel_traits_bwd.cuh; launch_bwd.cuh checks it):
// the GQA split is sized from it.
constexpr int bwd_block_n(int head_dim) { return head_dim == 256 ? 64 : 128; }

}  // namespace flashflex::sm80
