// The EAGLE3 functions of flashflex._C: eagle3_forward, eagle3_backward and their
// *_workspace_size over flashflex/eagle3.hpp. Tensors arrive in binding.cpp's
// convention, (data_ptr, dtype code, device type, device index, sizes, strides), block lists as
// lists of such tuples; flashflex::Error kinds are mapped to Python exceptions by the translator
// that binding.cpp registers for the whole module. Called from PYBIND11_MODULE in binding.cpp.
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

std::vector<ff::TensorRef> to_refs(const TensorList& list) {
  std::vector<ff::TensorRef> refs;
  refs.reserve(list.size());
  for (const TensorTuple& t : list) refs.push_back(to_ref(t));
  return refs;
}

ff::Eagle3ForwardArgs forward_args(const TensorTuple& q, const TensorList& k_blocks, const TensorList& v_blocks,
                                   const std::optional<TensorTuple>& seq_lengths, const TensorTuple& out,
                                   const std::optional<TensorTuple>& lse, std::optional<double> scale) {
  ff::Eagle3ForwardArgs a;
  a.q = to_ref(q);
  a.k_blocks = to_refs(k_blocks);
  a.v_blocks = to_refs(v_blocks);
  a.seq_lengths = to_ref(seq_lengths);
  a.out = to_ref(out);
  a.lse = to_ref(lse);
  a.scale = scale;
  return a;
}

std::size_t eagle3_forward_workspace_size(const TensorTuple& q, const TensorList& k_blocks,
                                          const TensorList& v_blocks, const std::optional<TensorTuple>& seq_lengths,
                                          const TensorTuple& out, const std::optional<TensorTuple>& lse,
                                          std::optional<double> scale) {
  return ff::workspace_size(forward_args(q, k_blocks, v_blocks, seq_lengths, out, lse, scale));
}

void eagle3_forward(const TensorTuple& q, const TensorList& k_blocks, const TensorList& v_blocks,
                    const std::optional<TensorTuple>& seq_lengths, const TensorTuple& out,
                    const std::optional<TensorTuple>& lse, std::optional<double> scale, int backend,
                    std::uintptr_t workspace, std::size_t workspace_bytes, std::uintptr_t stream) {
  ff::Eagle3ForwardArgs a = forward_args(q, k_blocks, v_blocks, seq_lengths, out, lse, scale);
  a.backend = flashflex::binding::to_backend(backend);
  py::gil_scoped_release release;
  ff::eagle3_forward(a, ff::Workspace{reinterpret_cast<void*>(workspace), workspace_bytes},
                     reinterpret_cast<void*>(stream));
}

ff::Eagle3BackwardArgs backward_args(const TensorTuple& q, const TensorList& k_blocks, const TensorList& v_blocks,
                                     const std::optional<TensorTuple>& seq_lengths, const TensorTuple& out,
                                     const TensorTuple& dout, const TensorTuple& lse,
                                     const std::optional<TensorTuple>& dlse, const TensorTuple& dq,
                                     const TensorList& dk_blocks, const TensorList& dv_blocks,
                                     std::optional<double> scale, bool deterministic) {
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
  return a;
}

std::size_t eagle3_backward_workspace_size(const TensorTuple& q, const TensorList& k_blocks,
                                           const TensorList& v_blocks, const std::optional<TensorTuple>& seq_lengths,
                                           const TensorTuple& out, const TensorTuple& dout, const TensorTuple& lse,
                                           const std::optional<TensorTuple>& dlse, const TensorTuple& dq,
                                           const TensorList& dk_blocks, const TensorList& dv_blocks,
                                           std::optional<double> scale, bool deterministic) {
  return ff::workspace_size(backward_args(q, k_blocks, v_blocks, seq_lengths, out, dout, lse, dlse, dq, dk_blocks,
                                          dv_blocks, scale, deterministic));
}

void eagle3_backward(const TensorTuple& q, const TensorList& k_blocks, const TensorList& v_blocks,
                     const std::optional<TensorTuple>& seq_lengths, const TensorTuple& out, const TensorTuple& dout,
                     const TensorTuple& lse, const std::optional<TensorTuple>& dlse, const TensorTuple& dq,
                     const TensorList& dk_blocks, const TensorList& dv_blocks, std::optional<double> scale,
                     bool deterministic, int backend, std::uintptr_t workspace, std::size_t workspace_bytes,
                     std::uintptr_t stream) {
  ff::Eagle3BackwardArgs a = backward_args(q, k_blocks, v_blocks, seq_lengths, out, dout, lse, dlse, dq, dk_blocks,
                                           dv_blocks, scale, deterministic);
  a.backend = flashflex::binding::to_backend(backend);
  py::gil_scoped_release release;
  ff::eagle3_backward(a, ff::Workspace{reinterpret_cast<void*>(workspace), workspace_bytes},
                      reinterpret_cast<void*>(stream));
}

}  // namespace

void bind_eagle3(py::module_& mod) {
  mod.def("eagle3_forward", &eagle3_forward, py::arg("q"), py::arg("k_blocks"), py::arg("v_blocks"),
          py::arg("seq_lengths"), py::arg("out"), py::arg("lse"), py::arg("scale"), py::arg("backend"),
          py::arg("workspace"), py::arg("workspace_bytes"), py::arg("stream"));
  mod.def("eagle3_forward_workspace_size", &eagle3_forward_workspace_size, py::arg("q"), py::arg("k_blocks"),
          py::arg("v_blocks"), py::arg("seq_lengths"), py::arg("out"), py::arg("lse"), py::arg("scale"));
  mod.def("eagle3_backward", &eagle3_backward, py::arg("q"), py::arg("k_blocks"), py::arg("v_blocks"),
          py::arg("seq_lengths"), py::arg("out"), py::arg("dout"), py::arg("lse"), py::arg("dlse"), py::arg("dq"),
          py::arg("dk_blocks"), py::arg("dv_blocks"), py::arg("scale"), py::arg("deterministic"),
          py::arg("backend"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("stream"));
  mod.def("eagle3_backward_workspace_size", &eagle3_backward_workspace_size, py::arg("q"), py::arg("k_blocks"),
          py::arg("v_blocks"), py::arg("seq_lengths"), py::arg("out"), py::arg("dout"), py::arg("lse"),
          py::arg("dlse"), py::arg("dq"), py::arg("dk_blocks"), py::arg("dv_blocks"), py::arg("scale"),
          py::arg("deterministic"));
}
