// Definitions of device_info.hpp: per-device facts and per-(kernel, device) shared-memory limits,
// each read from the runtime once and kept behind a mutex (a lookup costs a lock, tens of ns).
#include "cuda/device_info.hpp"

#include <cuda_runtime_api.h>

#include <map>
#include <mutex>
#include <set>
#include <utility>

#include "api/message.hpp"
#include "cuda/cuda_check.hpp"

namespace flashflex::cuda {
namespace {

std::mutex& cache_mutex() {
  static std::mutex m;
  return m;
}

}  // namespace

int current_device() {
  int device = 0;
  FLASHFLEX_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

const DeviceInfo& device_info(int device) {
  static std::map<int, DeviceInfo> cache;
  std::lock_guard<std::mutex> lock(cache_mutex());
  auto it = cache.find(device);
  if (it != cache.end()) return it->second;
  DeviceInfo info;
  FLASHFLEX_CUDA_CHECK(cudaDeviceGetAttribute(&info.sm_count, cudaDevAttrMultiProcessorCount, device));
  FLASHFLEX_CUDA_CHECK(cudaDeviceGetAttribute(&info.cc_major, cudaDevAttrComputeCapabilityMajor, device));
  FLASHFLEX_CUDA_CHECK(cudaDeviceGetAttribute(&info.cc_minor, cudaDevAttrComputeCapabilityMinor, device));
  FLASHFLEX_CUDA_CHECK(cudaDeviceGetAttribute(&info.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return cache.emplace(device, info).first->second;
}

int kernel_binary_arch(const void* kernel, int device) {
  static std::map<std::pair<const void*, int>, int> cache;
  {
    std::lock_guard<std::mutex> lock(cache_mutex());
    auto it = cache.find({kernel, device});
    if (it != cache.end()) return it->second;
  }
  cudaFuncAttributes attr{};
  FLASHFLEX_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  std::lock_guard<std::mutex> lock(cache_mutex());
  cache[{kernel, device}] = attr.binaryVersion;
  return attr.binaryVersion;
}

void prepare_kernel_smem(const void* kernel, int smem_bytes, int device, const char* kernel_name, int head_dim) {
  static std::set<std::pair<const void*, int>> done;
  {
    std::lock_guard<std::mutex> lock(cache_mutex());
    if (done.count({kernel, device})) return;
  }
  const int optin = device_info(device).smem_optin;
  if (smem_bytes > optin) {
    throw Error(ErrorKind::kUnsupported, flashflex::detail::concat("q: ", kernel_name, " for head_dim ", head_dim,
                                                                   " needs ", smem_bytes,
                                                                   " bytes of shared memory per block, device ",
                                                                   device, " allows ", optin));
  }
  FLASHFLEX_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
  std::lock_guard<std::mutex> lock(cache_mutex());
  done.insert({kernel, device});
}

Arch select_arch(int device, Backend requested) {
  const DeviceInfo& info = device_info(device);
  if (info.cc_major < 8) {
    throw Error(ErrorKind::kUnsupported,
                flashflex::detail::concat("q: the CUDA kernels need compute capability 8.0 or newer (mma.sync, cp.async), "
                                          "got ", info.cc_major, ".", info.cc_minor, " on device ", device));
  }
  const bool hopper = info.cc_major == 9;
  if (requested == Backend::kSm90 && !hopper) {
    throw Error(ErrorKind::kUnsupported,
                flashflex::detail::concat("backend: the sm90 kernels need compute capability 9.x (Hopper), device ",
                                          device, " has ", info.cc_major, ".", info.cc_minor,
                                          "; use the sm80 backend or the automatic choice"));
  }
  if (requested == Backend::kSm80) return Arch::kSm80;
  return hopper ? Arch::kSm90 : Arch::kSm80;
}

}  // namespace flashflex::cuda
