// TensorRef helpers: construction with default (row-major) strides and dtype/device names.
#include "flashflex/tensor.hpp"

#include "flashflex/error.hpp"

namespace flashflex {

TensorRef make_tensor(void* data, DType dtype, std::initializer_list<int64_t> sizes,
                      std::initializer_list<int64_t> strides, Device device) {
  if (sizes.size() > static_cast<size_t>(kMaxRank)) {
    throw Error(ErrorKind::kInvalidArgument,
                "make_tensor: expected at most " + std::to_string(kMaxRank) + " sizes, got " +
                    std::to_string(sizes.size()));
  }
  if (strides.size() != 0 && strides.size() != sizes.size()) {
    throw Error(ErrorKind::kInvalidArgument,
                "make_tensor: expected " + std::to_string(sizes.size()) + " strides (one per size), got " +
                    std::to_string(strides.size()));
  }
  TensorRef t;
  t.data = data;
  t.dtype = dtype;
  t.device = device;
  t.rank = static_cast<int>(sizes.size());
  int i = 0;
  for (int64_t s : sizes) t.sizes[i++] = s;
  if (strides.size() != 0) {
    i = 0;
    for (int64_t s : strides) t.strides[i++] = s;
  } else {
    int64_t stride = 1;
    for (int d = t.rank - 1; d >= 0; --d) {
      t.strides[d] = stride;
      stride *= t.sizes[d];
    }
  }
  return t;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
  }
  return "unknown dtype";
}

std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kFloat16: return 2;
    case DType::kBFloat16: return 2;
    case DType::kInt32: return 4;
    case DType::kInt64: return 8;
  }
  return 0;
}

const char* device_name(Device device) {
  return device.type == DeviceType::kCuda ? "cuda" : "cpu";
}

}  // namespace flashflex
