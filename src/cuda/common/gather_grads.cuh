// The gradients of a linked score mod's captured tensors in the backward kernels (sm80 and
// sm90 alike): per step, the hook's partial derivative of each gathered element times dS, added
// into the fp32 buffer of that gather's tensor (ScoreModParams::hook_gather_grads).
#pragma once

#include <cstdint>

#include "cuda/common/score_mod.cuh"
#include "cuda/params.hpp"
#include "flashflex/mods.hpp"

namespace flashflex::cuda {

// The gradients of a linked hook's gathered elements over one step: each gather keeps a run of
// equal offsets in registers and adds it with one atomic when the offset changes, and at the end.
// A per-head tensor (one offset for the whole CTA) then costs one atomic per thread and step
// instead of one per score. Empty for every other mod.
template <ScoreModKind kMod>
struct GatherGradRuns {
  __device__ void add(const ScoreModParams&, const float (&)[kMaxHookGathers],
                      const int64_t (&)[kMaxHookGathers], float) {}
  __device__ void flush(const ScoreModParams&) const {}
};

template <>
struct GatherGradRuns<ScoreModKind::kLinked> {
  int64_t offset[kMaxHookGathers];
  float sum[kMaxHookGathers];
  __device__ GatherGradRuns() {
#pragma unroll
    for (int g = 0; g < kMaxHookGathers; ++g) offset[g] = -1, sum[g] = 0.f;
  }
  // ds: d loss / d mod value of one visible score; d_gathered, at: the hook's partials and offsets
  // (offset -1: an index out of range, the score NaN and the loss too: nothing to add).
  __device__ void add(const ScoreModParams& mod, const float (&d_gathered)[kMaxHookGathers],
                      const int64_t (&at)[kMaxHookGathers], float ds) {
#pragma unroll
    for (int g = 0; g < kMaxHookGathers; ++g) {
      if (g >= flashflex_score_mod_gathers()) break;  // folds away once linked
      if (mod.hook_gather_grads[g] == nullptr || at[g] < 0) continue;
      if (at[g] != offset[g]) {
        if (offset[g] >= 0) atomicAdd(mod.hook_gather_grads[g] + offset[g], sum[g]);
        offset[g] = at[g];
        sum[g] = 0.f;
      }
      sum[g] += ds * d_gathered[g];
    }
  }
  __device__ void flush(const ScoreModParams& mod) const {
#pragma unroll
    for (int g = 0; g < kMaxHookGathers; ++g) {
      if (g >= flashflex_score_mod_gathers()) break;
      if (offset[g] >= 0) atomicAdd(mod.hook_gather_grads[g] + offset[g], sum[g]);
    }
  }
};

}  // namespace flashflex::cuda
