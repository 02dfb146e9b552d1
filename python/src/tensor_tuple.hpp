// The tensor convention of flashflex._C: (data_ptr, dtype code, device type, device index,
// sizes, strides), built by python/flashflex/_tensor_ref.py, and its conversion to TensorRef.
// Shared by binding.cpp and bind_eagle3.cpp.
#pragma once

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

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

}  // namespace flashflex::binding
