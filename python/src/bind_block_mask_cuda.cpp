// The GPU block-mask builder in flashflex._C: block_mask_cuda_size and build_block_mask_cuda over
// flashflex/block_mask_cuda.hpp. The buffer is a device pointer the Python layer allocated (a
// torch uint8 tensor); the build returns the 10 array pointers of the BlockMask inside it, in the
// order of binding.cpp's mask tuple. Called from PYBIND11_MODULE in binding.cpp.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "flashflex/block_mask_cuda.hpp"

namespace py = pybind11;
namespace ff = flashflex;

namespace {

// (workspace bytes, BlockMask batch, BlockMask heads, bitmaps reserved)
std::tuple<std::size_t, int64_t, int64_t, int64_t> size(const ff::Mask& mask, int64_t batch, int64_t heads,
                                                        int64_t q_len, int64_t kv_len) {
  const ff::BlockMaskCudaSize s = ff::block_mask_cuda_size(mask, batch, heads, q_len, kv_len);
  return {s.workspace_bytes, s.batch, s.heads, s.num_partial_tiles};
}

std::vector<std::uintptr_t> build(const ff::Mask& mask, int64_t batch, int64_t heads, int64_t q_len, int64_t kv_len,
                                  std::uintptr_t buffer, std::size_t buffer_bytes, int device_index,
                                  std::uintptr_t stream) {
  ff::BlockMask m;
  {
    py::gil_scoped_release release;
    m = ff::build_block_mask_cuda(mask, batch, heads, q_len, kv_len,
                                  ff::Workspace{reinterpret_cast<void*>(buffer), buffer_bytes}, device_index,
                                  reinterpret_cast<void*>(stream));
  }
  const auto p = [](const void* ptr) { return reinterpret_cast<std::uintptr_t>(ptr); };
  return {p(m.kv_num_blocks), p(m.kv_indices), p(m.full_kv_num_blocks), p(m.full_kv_indices),
          p(m.q_num_blocks),  p(m.q_indices),  p(m.full_q_num_blocks),  p(m.full_q_indices),
          p(m.partial_tile_ids), p(m.bitmaps)};
}

}  // namespace

void bind_block_mask_cuda(py::module_& mod) {
  mod.def("block_mask_cuda_size", &size, py::arg("mask"), py::arg("batch"), py::arg("heads"), py::arg("q_len"),
          py::arg("kv_len"));
  mod.def("build_block_mask_cuda", &build, py::arg("mask"), py::arg("batch"), py::arg("heads"), py::arg("q_len"),
          py::arg("kv_len"), py::arg("buffer"), py::arg("buffer_bytes"), py::arg("device_index"),
          py::arg("stream"));
}
