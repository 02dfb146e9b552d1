// flashflex._C: the one binding module. Tensors arrive as plain tuples
// (data_ptr, dtype code, device type, device index, sizes, strides) built by
// python/flashflex/_tensor_ref.py; torch never enters C++. Error kinds map to Python
// exceptions once, here: invalid -> ValueError, unsupported -> NotImplementedError,
// CUDA / internal -> RuntimeError.
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "flashflex/attention.hpp"
#include "flashflex/linked_kernel.hpp"
#include "flashflex/mask.hpp"
#include "tensor_tuple.hpp"

namespace py = pybind11;
namespace ff = flashflex;

namespace {

using flashflex::binding::TensorTuple;
using flashflex::binding::to_ref;

// A tensor a linked hook reads: (data_ptr, strides, sizes, dtype code), kHookTensorDims each
// (python/flashflex/_score_mod_codegen.py's tensor_descriptor).
using HookTuple = std::tuple<std::uintptr_t, std::vector<int64_t>, std::vector<int64_t>, int>;
// (kind, softcap, alibi slopes, bias, linked kernel handle or 0, the linked hook's tensors, and
// for the backward each gather's float32 gradient buffer or 0)
using ModTuple = std::tuple<int, double, std::optional<TensorTuple>, std::optional<TensorTuple>, std::uintptr_t,
                            std::vector<HookTuple>, std::vector<std::uintptr_t>>;

ff::ScoreMod to_mod(const ModTuple& m) {
  ff::ScoreMod mod;
  mod.kind = static_cast<ff::ScoreModKind>(std::get<0>(m));
  mod.softcap = std::get<1>(m);
  mod.alibi_slopes = to_ref(std::get<2>(m));
  mod.bias = to_ref(std::get<3>(m));
  mod.linked_kernel = reinterpret_cast<const void*>(std::get<4>(m));
  const std::vector<HookTuple>& hooks = std::get<5>(m);
  if (hooks.size() > static_cast<size_t>(ff::kMaxHookTensors)) {
    throw ff::Error(ff::ErrorKind::kUnsupported, "score_mod: a linked score mod reads at most " +
                                                     std::to_string(ff::kMaxHookTensors) + " captured tensors, got " +
                                                     std::to_string(hooks.size()));
  }
  mod.num_hook_tensors = static_cast<int>(hooks.size());
  for (size_t i = 0; i < hooks.size(); ++i) {
    const auto& [ptr, strides, sizes, dtype] = hooks[i];
    if (strides.size() != ff::kHookTensorDims || sizes.size() != ff::kHookTensorDims) {
      throw ff::Error(ff::ErrorKind::kInvalidArgument, "score_mod: expected " + std::to_string(ff::kHookTensorDims) +
                                                           " strides and sizes per hook tensor");
    }
    ff::HookTensor& t = mod.hook_tensors[i];
    t.data = reinterpret_cast<const void*>(ptr);
    for (int d = 0; d < ff::kHookTensorDims; ++d) t.stride[d] = strides[d], t.size[d] = sizes[d];
    t.dtype = dtype;
  }
  const std::vector<std::uintptr_t>& grads = std::get<6>(m);
  if (grads.size() > static_cast<size_t>(ff::kMaxHookGathers)) {
    throw ff::Error(ff::ErrorKind::kInvalidArgument, "score_mod: expected at most " +
                                                         std::to_string(ff::kMaxHookGathers) +
                                                         " gather gradients, got " + std::to_string(grads.size()));
  }
  for (size_t g = 0; g < grads.size(); ++g) mod.hook_gather_grads[g] = reinterpret_cast<float*>(grads[g]);
  return mod;
}

// A linked cubin (bytes) loaded as the kernel of (pass, dtype code, head dim, family: a BACKENDS
// code, SM80 or SM90): its handle.
std::uintptr_t load_linked_kernel(const py::bytes& image, int pass, int dtype, int head_dim, int family) {
  const std::string data = image;
  const ff::LinkedKernelKind kind{static_cast<ff::KernelPass>(pass), static_cast<ff::DType>(dtype), head_dim,
                                  flashflex::binding::to_backend(family)};
  py::gil_scoped_release release;
  return reinterpret_cast<std::uintptr_t>(ff::load_linked_kernel(data.data(), data.size(), kind));
}

// (batch, heads, q_len, kv_len, num_partial_tiles, device type, device index, 10 array pointers in
// the order of BlockMask's fields)
using MaskTuple = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int, int, std::vector<std::uintptr_t>>;

constexpr size_t kMaskArrays = 10;

ff::BlockMask to_mask(const MaskTuple& t) {
  const auto& [batch, heads, q_len, kv_len, num_partial, device_type, device_index, ptrs] = t;
  if (ptrs.size() != kMaskArrays) {
    throw ff::Error(ff::ErrorKind::kInvalidArgument,
                    "block_mask: expected 10 arrays, got " + std::to_string(ptrs.size()));
  }
  ff::BlockMask m;
  m.batch = batch;
  m.heads = heads;
  m.q_len = q_len;
  m.kv_len = kv_len;
  m.num_q_tiles = ff::num_tiles(q_len);
  m.num_kv_tiles = ff::num_tiles(kv_len);
  m.num_partial_tiles = num_partial;
  m.device = ff::Device{static_cast<ff::DeviceType>(device_type), device_index};
  auto i32 = [&](size_t i) { return reinterpret_cast<const int32_t*>(ptrs[i]); };
  m.kv_num_blocks = i32(0);
  m.kv_indices = i32(1);
  m.full_kv_num_blocks = i32(2);
  m.full_kv_indices = i32(3);
  m.q_num_blocks = i32(4);
  m.q_indices = i32(5);
  m.full_q_num_blocks = i32(6);
  m.full_q_indices = i32(7);
  m.partial_tile_ids = i32(8);
  m.bitmaps = reinterpret_cast<const uint32_t*>(ptrs[9]);
  return m;
}

// The forward's arguments, shared by forward() and forward_workspace_size(). `mask` is the
// caller's storage for the block-mask view that a.block_mask points into.
ff::ForwardArgs forward_args(const TensorTuple& q, const TensorTuple& k, const TensorTuple& v, const TensorTuple& out,
                             const std::optional<TensorTuple>& lse, std::optional<double> scale, const ModTuple& mod,
                             const std::optional<MaskTuple>& mask_tuple, int backend,
                             std::optional<ff::BlockMask>& mask) {
  ff::ForwardArgs a;
  a.q = to_ref(q);
  a.k = to_ref(k);
  a.v = to_ref(v);
  a.out = to_ref(out);
  a.lse = to_ref(lse);
  a.scale = scale;
  a.score_mod = to_mod(mod);
  if (mask_tuple) mask = to_mask(*mask_tuple);
  a.block_mask = mask ? &*mask : nullptr;
  a.backend = flashflex::binding::to_backend(backend);
  return a;
}

std::size_t forward_workspace_size(const TensorTuple& q, const TensorTuple& k, const TensorTuple& v,
                                   const TensorTuple& out, const std::optional<TensorTuple>& lse,
                                   std::optional<double> scale, const ModTuple& mod,
                                   const std::optional<MaskTuple>& mask_tuple, int backend) {
  std::optional<ff::BlockMask> mask;
  return ff::workspace_size(forward_args(q, k, v, out, lse, scale, mod, mask_tuple, backend, mask));
}

void forward(const TensorTuple& q, const TensorTuple& k, const TensorTuple& v, const TensorTuple& out,
             const std::optional<TensorTuple>& lse, std::optional<double> scale, const ModTuple& mod,
             const std::optional<MaskTuple>& mask_tuple, int backend, std::uintptr_t workspace,
             std::size_t workspace_bytes, std::uintptr_t stream) {
  std::optional<ff::BlockMask> mask;
  const ff::ForwardArgs a = forward_args(q, k, v, out, lse, scale, mod, mask_tuple, backend, mask);
  py::gil_scoped_release release;
  ff::forward(a, ff::Workspace{reinterpret_cast<void*>(workspace), workspace_bytes}, reinterpret_cast<void*>(stream));
}

// The backward's arguments, shared by backward() and backward_workspace_size(). `mask` is the
// caller's storage for the block-mask view that a.block_mask points into.
ff::BackwardArgs backward_args(const TensorTuple& q, const TensorTuple& k, const TensorTuple& v,
                               const TensorTuple& out, const TensorTuple& dout, const TensorTuple& lse,
                               const std::optional<TensorTuple>& dlse, const TensorTuple& dq, const TensorTuple& dk,
                               const TensorTuple& dv, const std::optional<TensorTuple>& dbias,
                               std::optional<double> scale, const ModTuple& mod,
                               const std::optional<MaskTuple>& mask_tuple, bool deterministic, int backend,
                               std::optional<ff::BlockMask>& mask) {
  ff::BackwardArgs a;
  a.q = to_ref(q);
  a.k = to_ref(k);
  a.v = to_ref(v);
  a.out = to_ref(out);
  a.dout = to_ref(dout);
  a.lse = to_ref(lse);
  a.dlse = to_ref(dlse);
  a.dq = to_ref(dq);
  a.dk = to_ref(dk);
  a.dv = to_ref(dv);
  a.dbias = to_ref(dbias);
  a.scale = scale;
  a.score_mod = to_mod(mod);
  a.deterministic = deterministic;
  a.backend = flashflex::binding::to_backend(backend);
  if (mask_tuple) mask = to_mask(*mask_tuple);
  a.block_mask = mask ? &*mask : nullptr;
  return a;
}

std::size_t backward_workspace_size(const TensorTuple& q, const TensorTuple& k, const TensorTuple& v,
                                    const TensorTuple& out, const TensorTuple& dout, const TensorTuple& lse,
                                    const std::optional<TensorTuple>& dlse, const TensorTuple& dq,
                                    const TensorTuple& dk, const TensorTuple& dv,
                                    const std::optional<TensorTuple>& dbias, std::optional<double> scale,
                                    const ModTuple& mod, const std::optional<MaskTuple>& mask_tuple,
                                    bool deterministic, int backend) {
  std::optional<ff::BlockMask> mask;
  const ff::BackwardArgs a = backward_args(q, k, v, out, dout, lse, dlse, dq, dk, dv, dbias, scale, mod,
                                           mask_tuple, deterministic, backend, mask);
  return ff::workspace_size(a);
}

void backward(const TensorTuple& q, const TensorTuple& k, const TensorTuple& v, const TensorTuple& out,
              const TensorTuple& dout, const TensorTuple& lse, const std::optional<TensorTuple>& dlse,
              const TensorTuple& dq, const TensorTuple& dk, const TensorTuple& dv,
              const std::optional<TensorTuple>& dbias, std::optional<double> scale, const ModTuple& mod,
              const std::optional<MaskTuple>& mask_tuple, bool deterministic, int backend, std::uintptr_t workspace,
              std::size_t workspace_bytes, std::uintptr_t stream) {
  std::optional<ff::BlockMask> mask;
  const ff::BackwardArgs a = backward_args(q, k, v, out, dout, lse, dlse, dq, dk, dv, dbias, scale, mod,
                                           mask_tuple, deterministic, backend, mask);
  py::gil_scoped_release release;
  ff::backward(a, ff::Workspace{reinterpret_cast<void*>(workspace), workspace_bytes},
               reinterpret_cast<void*>(stream));
}

// Copies a built mask into caller-allocated int32 buffers (same order as to_mask's pointers).
void copy_block_mask(const ff::HostBlockMask& m, const std::vector<std::uintptr_t>& ptrs) {
  if (ptrs.size() != kMaskArrays) {
    throw ff::Error(ff::ErrorKind::kInvalidArgument, "copy_to: expected 10 pointers, got " + std::to_string(ptrs.size()));
  }
  const std::vector<int32_t>* lists[] = {&m.kv_num_blocks, &m.kv_indices, &m.full_kv_num_blocks,
                                         &m.full_kv_indices, &m.q_num_blocks, &m.q_indices,
                                         &m.full_q_num_blocks, &m.full_q_indices, &m.partial_tile_ids};
  for (size_t i = 0; i < kMaskArrays - 1; ++i) {
    std::copy(lists[i]->begin(), lists[i]->end(), reinterpret_cast<int32_t*>(ptrs[i]));
  }
  std::copy(m.bitmaps.begin(), m.bitmaps.end(), reinterpret_cast<uint32_t*>(ptrs[kMaskArrays - 1]));
}

}  // namespace

void bind_eagle3(py::module_& mod);  // bind_eagle3.cpp
void bind_block_mask_cuda(py::module_& mod);  // bind_block_mask_cuda.cpp

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "flashflex native core (torch-free binding)";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ff::Error& e) {
      switch (e.kind()) {
        case ff::ErrorKind::kInvalidArgument: PyErr_SetString(PyExc_ValueError, e.what()); return;
        case ff::ErrorKind::kUnsupported: PyErr_SetString(PyExc_NotImplementedError, e.what()); return;
        default: PyErr_SetString(PyExc_RuntimeError, e.what()); return;
      }
    }
  });

  mod.attr("TILE_SIZE") = ff::kTileSize;
  mod.attr("BITMAP_WORDS") = ff::kBitmapWords;
  mod.attr("MAX_SEQ_LEN") = ff::kMaxSeqLen;
  mod.attr("MAX_MASK_TILES") = ff::kMaxMaskTiles;
  // name -> flashflex::ScoreModKind code: the Python side never restates the enum's values.
  py::dict score_mod_kinds;
  for (ff::ScoreModKind kind : {ff::ScoreModKind::kNone, ff::ScoreModKind::kSoftcap, ff::ScoreModKind::kAlibi,
                                ff::ScoreModKind::kBias, ff::ScoreModKind::kLinked}) {
    score_mod_kinds[ff::score_mod_name(kind)] = static_cast<int>(kind);
  }
  mod.attr("SCORE_MOD_KINDS") = score_mod_kinds;
  mod.attr("MAX_HOOK_TENSORS") = ff::kMaxHookTensors;
  mod.def("load_linked_kernel", &load_linked_kernel, py::arg("image"), py::arg("pass_"), py::arg("dtype"),
          py::arg("head_dim"), py::arg("family"));
  mod.def("supported_head_dims", &ff::supported_head_dims);
  mod.attr("BACKENDS") = py::dict(py::arg("AUTO") = static_cast<int>(ff::Backend::kAuto),
                                  py::arg("SM80") = static_cast<int>(ff::Backend::kSm80),
                                  py::arg("SM90") = static_cast<int>(ff::Backend::kSm90));
  mod.def("forward", &forward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"),
          py::arg("scale"), py::arg("score_mod"), py::arg("block_mask"), py::arg("backend"), py::arg("workspace"),
          py::arg("workspace_bytes"), py::arg("stream"));
  mod.def("forward_workspace_size", &forward_workspace_size, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
          py::arg("lse"), py::arg("scale"), py::arg("score_mod"), py::arg("block_mask"), py::arg("backend"));
  mod.def("backward", &backward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("dout"),
          py::arg("lse"), py::arg("dlse"), py::arg("dq"), py::arg("dk"), py::arg("dv"), py::arg("dbias"),
          py::arg("scale"), py::arg("score_mod"), py::arg("block_mask"), py::arg("deterministic"),
          py::arg("backend"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("stream"));
  mod.def("backward_workspace_size", &backward_workspace_size, py::arg("q"), py::arg("k"), py::arg("v"),
          py::arg("out"), py::arg("dout"), py::arg("lse"), py::arg("dlse"), py::arg("dq"), py::arg("dk"),
          py::arg("dv"), py::arg("dbias"), py::arg("scale"), py::arg("score_mod"), py::arg("block_mask"),
          py::arg("deterministic"), py::arg("backend"));
  mod.def("has_cuda_backend", &ff::has_cuda_backend);
  mod.def("has_linked_kernels", [](int family) { return ff::has_linked_kernels(flashflex::binding::to_backend(family)); },
          py::arg("family"));
  bind_eagle3(mod);
  bind_block_mask_cuda(mod);

  py::class_<ff::Mask>(mod, "Mask")
      .def_static("causal", &ff::Mask::causal, py::arg("offset") = 0)
      .def_static("sliding_window", &ff::Mask::sliding_window, py::arg("left"), py::arg("right"),
                  py::arg("offset") = 0)
      .def_static("document", &ff::Mask::document, py::arg("q_doc_ids"), py::arg("kv_doc_ids"), py::arg("batch"))
      .def_static("prefix_lm", &ff::Mask::prefix_lm, py::arg("prefix_lengths"))
      .def_static("padding", &ff::Mask::padding, py::arg("q_lengths"), py::arg("kv_lengths"))
      .def_static("eagle3", &ff::Mask::eagle3, py::arg("step"), py::arg("block_len"), py::arg("lengths"))
      .def("__and__", [](const ff::Mask& a, const ff::Mask& b) { return a & b; })
      .def("__or__", [](const ff::Mask& a, const ff::Mask& b) { return a | b; })
      .def("__call__", &ff::Mask::operator(), py::arg("b"), py::arg("h"), py::arg("q"), py::arg("kv"))
      .def_property_readonly("batch", &ff::Mask::batch)
      .def_property_readonly("depends_on_head", &ff::Mask::depends_on_head);

  py::class_<ff::HostBlockMask>(mod, "HostBlockMask")
      .def_readonly("batch", &ff::HostBlockMask::batch)
      .def_readonly("heads", &ff::HostBlockMask::heads)
      .def_readonly("q_len", &ff::HostBlockMask::q_len)
      .def_readonly("kv_len", &ff::HostBlockMask::kv_len)
      .def_property_readonly("num_partial_tiles", &ff::HostBlockMask::num_partial_tiles)
      .def("copy_to", &copy_block_mask, py::arg("pointers"));

  mod.def("build_block_mask", &ff::build_block_mask, py::arg("mask"), py::arg("batch"), py::arg("heads"),
          py::arg("q_len"), py::arg("kv_len"), py::call_guard<py::gil_scoped_release>());
}
