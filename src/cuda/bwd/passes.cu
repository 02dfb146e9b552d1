// The backward's passes that are not mainloops (passes.hpp): their launchers and the table over
// (dtype, head dim) of the kernel set (src/kernel_set.hpp). Every launch is checked; nothing
// synchronizes.
#include "cuda/bwd/passes.hpp"

#include <cuda_runtime_api.h>

#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>

#include "api/message.hpp"
#include "cuda/bwd/convert.cuh"
#include "cuda/bwd/dq_order.cuh"
#include "cuda/bwd/preprocess.cuh"
#include "cuda/bwd/row_local.cuh"
#include "cuda/cuda_check.hpp"
#include "cuda/element_type.cuh"
#include "kernel_set.hpp"

namespace flashflex::bwd {
namespace {

unsigned blocks_of(int64_t items, int64_t per_block) { return static_cast<unsigned>((items + per_block - 1) / per_block); }

// One thread per item, `threads` per block, on the caller's stream; the launch is checked.
template <class Params>
void launch_1d(void (*kernel)(Params), int64_t items, int threads, const Params& p, void* stream) {
  kernel<<<blocks_of(items, threads), threads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  FLASHFLEX_CUDA_CHECK(cudaGetLastError());
}

template <DType kDType, int kHeadDim>
void launch_preprocess(const cuda::BwdParams& p, void* stream) {
  // kHeadDim / 8 threads per row (16 bytes of dO and O each).
  const int64_t rows = static_cast<int64_t>(p.batch) * p.q_heads * p.q_len_pad;
  launch_1d(bwd_preprocess_kernel<cuda::element_t<kDType>, kHeadDim>, rows * (kHeadDim / 8), kPreprocessThreads, p,
            stream);
}

template <DType kDType, int kHeadDim>
void launch_convert_dq(const cuda::BwdParams& p, void* stream) {
  const int64_t chunks = static_cast<int64_t>(p.batch) * p.q_heads * p.q_len * (kHeadDim / 8);
  launch_1d(bwd_convert_dq_kernel<cuda::element_t<kDType>, kHeadDim>, chunks, kConvertThreads, p, stream);
}

template <DType kDType, int kHeadDim>
void launch_reduce_dkv(const cuda::BwdParams& p, void* stream) {
  const int64_t chunks = static_cast<int64_t>(p.batch) * p.kv_heads * p.kv_len * (kHeadDim / 8);
  launch_1d(bwd_reduce_dkv_kernel<cuda::element_t<kDType>, kHeadDim>, chunks, kConvertThreads, p, stream);
}

template <DType kDType, int kHeadDim>
void launch_row_local(const cuda::RowLocalBwdParams& p, void* stream) {
  const dim3 grid(blocks_of(p.q_len, kRowLocalBwdWarps), static_cast<unsigned>(p.batch * p.kv_heads));
  row_local_bwd_kernel<cuda::element_t<kDType>, kHeadDim>
      <<<grid, kRowLocalBwdWarps * 32, 0, static_cast<cudaStream_t>(stream)>>>(p);
  FLASHFLEX_CUDA_CHECK(cudaGetLastError());
}

struct PassRow {
  DType dtype;
  int head_dim;
  Passes passes;
};

template <std::size_t I>
constexpr PassRow pass_row() {
  constexpr DType kDType = kKernelDTypes[I / kNumKernelHeadDims];
  constexpr int kHeadDim = kKernelHeadDims[I % kNumKernelHeadDims];
  return {kDType, kHeadDim,
          {&launch_preprocess<kDType, kHeadDim>, &launch_convert_dq<kDType, kHeadDim>,
           &launch_reduce_dkv<kDType, kHeadDim>, &launch_row_local<kDType, kHeadDim>}};
}

template <std::size_t... I>
constexpr std::array<PassRow, sizeof...(I)> pass_rows(std::index_sequence<I...>) {
  return {{pass_row<I>()...}};
}

constexpr auto kPassRows = pass_rows(std::make_index_sequence<kNumKernelDTypes * kNumKernelHeadDims>{});

}  // namespace

const Passes& find_passes(DType dtype, int head_dim) {
  for (const PassRow& r : kPassRows) {
    if (r.dtype == dtype && r.head_dim == head_dim) return r.passes;
  }
  std::string built;
  for (const PassRow& r : kPassRows) built += flashflex::detail::concat(" (", dtype_name(r.dtype), ", ", r.head_dim, ")");
  throw Error(ErrorKind::kUnsupported, flashflex::detail::concat("q: no CUDA backward passes for dtype ",
                                                                 dtype_name(dtype), ", head_dim ", head_dim,
                                                                 "; built:", built));
}

void launch_dq_order(const cuda::BwdParams& p, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  const dim3 mark_grid(static_cast<unsigned>(p.num_kv_tiles), static_cast<unsigned>(p.mask.batch * p.mask.heads));
  bwd_rank_mark_kernel<<<mark_grid, 128, 0, s>>>(p);
  FLASHFLEX_CUDA_CHECK(cudaGetLastError());
  const int64_t columns = static_cast<int64_t>(p.mask.batch) * p.mask.heads * p.num_q_tiles;
  bwd_rank_scan_kernel<<<blocks_of(columns, 128), 128, 0, s>>>(p);
  FLASHFLEX_CUDA_CHECK(cudaGetLastError());
}

int64_t dbias_convert_blocks(int64_t elements) {
  const int64_t blocks = (elements + kConvertThreads - 1) / kConvertThreads;
  if (blocks > std::numeric_limits<int32_t>::max()) {
    throw Error(ErrorKind::kUnsupported, flashflex::detail::concat("dbias: ", elements,
                                                                   " elements exceed the grid of the CUDA conversion kernel"));
  }
  return blocks;
}

void launch_convert_dbias(const cuda::BwdParams& p, int64_t elements, void* stream) {
  dbias_convert_blocks(elements);  // the grid fits
  launch_1d(bwd_convert_dbias_kernel, elements, kConvertThreads, p, stream);
}

}  // namespace flashflex::bwd
