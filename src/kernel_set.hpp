// The closed set of compiled kernel variants, the axes of the CUDA kernel table
// (cuda/kernel_table.hpp): 16-bit dtypes x head dims x score mods. Torch-free and CUDA-free, so the
// API (supported_head_dims, validation) and the kernel table read the same list.
#pragma once

#include "flashflex/mods.hpp"
#include "flashflex/tensor.hpp"

namespace flashflex {

inline constexpr DType kKernelDTypes[] = {DType::kBFloat16, DType::kFloat16};
inline constexpr int kKernelHeadDims[] = {64, 128, 256};
inline constexpr ScoreModKind kKernelMods[] = {ScoreModKind::kNone, ScoreModKind::kSoftcap, ScoreModKind::kAlibi,
                                               ScoreModKind::kBias};

inline constexpr int kNumKernelDTypes = sizeof(kKernelDTypes) / sizeof(kKernelDTypes[0]);
inline constexpr int kNumKernelHeadDims = sizeof(kKernelHeadDims) / sizeof(kKernelHeadDims[0]);
inline constexpr int kNumKernelMods = sizeof(kKernelMods) / sizeof(kKernelMods[0]);

}  // namespace flashflex
