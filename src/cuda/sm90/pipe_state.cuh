// Position in an mbarrier ring of the sm_90 kernels (pipeline_fwd.cuh, pipeline_bwd.cuh): the
// stage, and the parity of the stage's current use. Consumers wait full(parity); the producer
// waits empty(parity ^ 1), which a fresh barrier passes at once (ptx/mbarrier.cuh).
#pragma once

#include <cstdint>

namespace flashflex::sm90 {

template <int kStages>
struct PipeState {
  int stage = 0;
  uint32_t phase = 0;
  __device__ void advance() {
    if (++stage == kStages) stage = 0, phase ^= 1;
  }
};

}  // namespace flashflex::sm90
