// TensorRef: a non-owning view of a strided tensor (pointer, dtype, device, sizes, strides).
// The only way tensors cross the API; no framework type ever enters the library.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>

namespace flashflex {

// Attention tensors are float32, float16 or bfloat16; the integer types serve index inputs
// (EAGLE3 sequence lengths) and are rejected wherever a float tensor is expected.
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kInt32 = 3, kInt64 = 4 };

enum class DeviceType : int { kCpu = 0, kCuda = 1 };

struct Device {
  DeviceType type = DeviceType::kCpu;
  int index = 0;  // CUDA ordinal; 0 for the CPU
};

inline bool operator==(Device a, Device b) { return a.type == b.type && a.index == b.index; }
inline bool operator!=(Device a, Device b) { return !(a == b); }

inline constexpr int kMaxRank = 4;

struct TensorRef {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  Device device{};
  int rank = 0;                        // 0: the tensor is absent (optional arguments)
  int64_t sizes[kMaxRank] = {};
  int64_t strides[kMaxRank] = {};      // in elements, not bytes

  bool defined() const { return rank > 0; }
};

// A TensorRef over `data`; with no strides given, the tensor is contiguous (row-major).
TensorRef make_tensor(void* data, DType dtype, std::initializer_list<int64_t> sizes,
                      std::initializer_list<int64_t> strides = {}, Device device = {});

const char* dtype_name(DType dtype);
std::size_t dtype_size(DType dtype);
const char* device_name(Device device);  // "cpu" or "cuda"

}  // namespace flashflex
