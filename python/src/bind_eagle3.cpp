// The EAGLE3 functions of flashflex._C over flashflex/eagle3.hpp: eagle3_forward, eagle3_backward,
// and block 0's causal mask (eagle3_causal_mask_size, build_eagle3_causal_mask). Tensors arrive in
// binding.cpp's convention, (data_ptr, dtype code, device type, device index, sizes, strides),
// block lists as lists of such tuples; a prebuilt causal mask as (data_ptr, bytes, seq_len,
// device index). One call per direction: the arguments are converted and validated once, and the
// workspace comes from the caller's `alloc_workspace(nbytes) -> data_ptr` (called only when bytes
// are needed; the caller keeps the memory alive past the call, the stream orders its reuse).
// flashflex::Error kinds are mapped to Python exceptions by the translator that binding.cpp
// registers for the whole module. Called from PYBIND11_MODULE in binding.cpp.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "flashflex/eagle3.hpp"
#include "tensor_tuple.hpp"

namespace py = pybind11;
namespace ff = flashflex;

namespace {

using flashflex::binding::TensorTuple;
using flashflex::binding::to_ref;
using TensorList = std::vector<TensorTuple>;
using MaskTuple = std::tuple<std::uintptr_t, std::size_t, int64_t, int>;  // data_ptr, bytes, seq_len, device

std::vector<ff::TensorRef> to_refs(const TensorList& list) {
  std::vector<ff::TensorRef> refs;
  refs.reserve(list.size());
  for (const TensorTuple& t : list) refs.push_back(to_ref(t));
  return refs;
}

ff::Eagle3CausalMask to_mask(const std::optional<MaskTuple>& m) {
  ff::Eagle3CausalMask mask;
  if (!m) return mask;
  const auto& [ptr, bytes, seq_len, device] = *m;
  mask.data = reinterpret_cast<const void*>(ptr);
  mask.bytes = bytes;
  mask.seq_len = seq_len;
  mask.device = ff::Device{ff::DeviceType::kCuda, device};
  return mask;
}

// workspace_size(args) bytes from the caller (validating the arguments on the way), then the call
// itself without the GIL.
template <class Args, class Run>
void run_with_workspace(const Args& a, const py::function& alloc_workspace, Run&& run) {
  const std::size_t bytes = ff::workspace_size(a);
  void* data = nullptr;
  if (bytes > 0) data = reinterpret_cast<void*>(alloc_workspace(bytes).template cast<std::uintptr_t>());
  py::gil_scoped_release release;
  run(ff::Workspace{data, bytes});
}

void eagle3_forward(const TensorTuple& q, const TensorList& k_blocks, const TensorList& v_blocks,
                    const std::optional<TensorTuple>& seq_lengths, const TensorTuple& out,
                    const std::optional<TensorTuple>& lse, std::optional<double> scale, int backend,
                    const std::optional<MaskTuple>& causal_mask, const py::function& alloc_workspace,
                    std::uintptr_t stream) {
  ff::Eagle3ForwardArgs a;
  a.q = to_ref(q);
  a.k_blocks = to_refs(k_blocks);
  a.v_blocks = to_refs(v_blocks);
  a.seq_lengths = to_ref(seq_lengths);
  a.out = to_ref(out);
  a.lse = to_ref(lse);
  a.scale = scale;
  a.backend = flashflex::binding::to_backend(backend);
  a.causal_mask = to_mask(causal_mask);
  run_with_workspace(a, alloc_workspace,
                     [&](ff::Workspace ws) { ff::eagle3_forward(a, ws, reinterpret_cast<void*>(stream)); });
}

void eagle3_backward(const TensorTuple& q, const TensorList& k_blocks, const TensorList& v_blocks,
                     const std::optional<TensorTuple>& seq_lengths, const TensorTuple& out, const TensorTuple& dout,
                     const TensorTuple& lse, const std::optional<TensorTuple>& dlse, const TensorTuple& dq,
                     const TensorList& dk_blocks, const TensorList& dv_blocks, std::optional<double> scale,
                     bool deterministic, int backend, const std::optional<MaskTuple>& causal_mask,
                     const py::function& alloc_workspace, std::uintptr_t stream) {
  ff::Eagle3BackwardArgs a;
  a.q = to_ref(q);
  a.k_blocks = to_refs(k_blocks);
  a.v_blocks = to_refs(v_blocks);
  a.seq_lengths = to_ref(seq_lengths);
  a.out = to_ref(out);
  a.dout = to_ref(dout);
  a.lse = to_ref(lse);
  a.dlse = to_ref(dlse);
  a.dq = to_ref(dq);
  a.dk_blocks = to_refs(dk_blocks);
  a.dv_blocks = to_refs(dv_blocks);
  a.scale = scale;
  a.deterministic = deterministic;
  a.backend = flashflex::binding::to_backend(backend);
  a.causal_mask = to_mask(causal_mask);
  run_with_workspace(a, alloc_workspace,
                     [&](ff::Workspace ws) { ff::eagle3_backward(a, ws, reinterpret_cast<void*>(stream)); });
}

void build_causal_mask(int64_t seq_len, int device, std::uintptr_t buffer, std::size_t bytes, std::uintptr_t stream) {
  ff::Workspace ws{reinterpret_cast<void*>(buffer), bytes};
  py::gil_scoped_release release;
  ff::build_eagle3_causal_mask(seq_len, ff::Device{ff::DeviceType::kCuda, device}, ws, reinterpret_cast<void*>(stream));
}

}  // namespace

void bind_eagle3(py::module_& mod) {
  mod.def("eagle3_forward", &eagle3_forward, py::arg("q"), py::arg("k_blocks"), py::arg("v_blocks"),
          py::arg("seq_lengths"), py::arg("out"), py::arg("lse"), py::arg("scale"), py::arg("backend"),
          py::arg("causal_mask"), py::arg("alloc_workspace"), py::arg("stream"));
  mod.def("eagle3_backward", &eagle3_backward, py::arg("q"), py::arg("k_blocks"), py::arg("v_blocks"),
          py::arg("seq_lengths"), py::arg("out"), py::arg("dout"), py::arg("lse"), py::arg("dlse"), py::arg("dq"),
          py::arg("dk_blocks"), py::arg("dv_blocks"), py::arg("scale"), py::arg("deterministic"),
          py::arg("backend"), py::arg("causal_mask"), py::arg("alloc_workspace"), py::arg("stream"));
  mod.def("eagle3_causal_mask_size", &ff::eagle3_causal_mask_size, py::arg("seq_len"));
  mod.def("build_eagle3_causal_mask", &build_causal_mask, py::arg("seq_len"), py::arg("device"), py::arg("buffer"),
          py::arg("bytes"), py::arg("stream"));
}
