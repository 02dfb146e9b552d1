// Host-side facts about devices and kernels, read once and cached (a read-only cache: the only
// global state of the CUDA backend; the caller owns memory and streams):
//   device_info(d)            SM count, compute capability, opt-in shared memory per block
//   kernel_binary_arch(k, d)  the architecture of the code of kernel k that runs on device d
//                             (e.g. 90 for sm_90 code; the PTX JIT's target otherwise)
//   prepare_kernel_smem(...)  checks a launch's dynamic shared memory against the device and
//                             raises the kernel's limit to it, once per (kernel, device)
//   select_arch(d)            which kernel family serves device d (kernel_table.hpp)
// Nothing here includes CUDA headers.
#pragma once

#include "cuda/kernel_table.hpp"

namespace flashflex::cuda {

struct DeviceInfo {
  int sm_count = 0;
  int cc_major = 0, cc_minor = 0;
  int smem_optin = 0;  // bytes of shared memory a block may opt in to
};

const DeviceInfo& device_info(int device);
int current_device();
int kernel_binary_arch(const void* kernel, int device);

// `kernel_name` and `head_dim` name the kernel in the error ("the CUDA forward for head_dim 256"),
// formatted only then: the launch path builds no string.
void prepare_kernel_smem(const void* kernel, int smem_bytes, int device, const char* kernel_name, int head_dim);

// kSm90 on compute capability 9.x when the build has sm_90a kernels and `requested` allows it
// (Backend::kAuto or kSm90); kSm80 otherwise. Requesting kSm90 where it cannot run throws.
Arch select_arch(int device, Backend requested);

}  // namespace flashflex::cuda
