// The tensor convention of flashflex._C: (data_ptr, dtype code, device type, device index,
// sizes, strides), built by python/flashflex/_tensor_ref.py, and its conversion to TensorRef;
// the backend code of the calls. Shared by binding.cpp and bind_eagle3.cpp.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "flashflex/attention.hpp"
#include "flashflex/error.hpp"
#include "flashflex/tensor.hpp"

namespace flashflex::binding {

using TensorTuple = std::tuple<std::uintptr_t, int, int, int, std::vector<int64_t>, std::vector<int64_t>>;

inline TensorRef to_ref(const std::optional<TensorTuple>& t) {
  TensorRef r;
  if (!t) return r;
  const auto& [ptr, dtype, device_type, device_index, sizes, strides] = *t;
  if (sizes.size() > static_cast<size_t>(kMaxRank) || strides.size() != sizes.size()) {
    throw Error(ErrorKind::kInvalidArgument, "tensor: expected at most 4 sizes with one stride each");
  }
  r.data = reinterpret_cast<void*>(ptr);
  r.dtype = static_cast<DType>(dtype);
  r.device = Device{static_cast<DeviceType>(device_type), device_index};
  r.rank = static_cast<int>(sizes.size());
  for (int d = 0; d < r.rank; ++d) {
    r.sizes[d] = sizes[d];
    r.strides[d] = strides[d];
  }
  return r;
}

// The backend code of the Python layer (flashflex._C.BACKENDS) as the C++ choice.
inline Backend to_backend(int code) {
  if (code < 0 || code > static_cast<int>(Backend::kSm90)) {
    throw Error(ErrorKind::kInvalidArgument, "backend: expected a code of flashflex._C.BACKENDS (0, 1, 2), got " +
                                                 std::to_string(code));
  }
  return static_cast<Backend>(code);
}

}  // namespace flashflex::binding
