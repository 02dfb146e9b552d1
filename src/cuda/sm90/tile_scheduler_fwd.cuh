// Persistent tile order of the sm_90 forward: grid = min(#SMs, tiles); CTA c takes positions c,
// c + gridDim.x, ... (wave w = position / gridDim.x) of one fixed order: q tiles from the last one
// (a causal or other lower-triangular mask gives the last tiles the most kv steps: longest
// first), and within a q tile every (batch, head) with the head fastest, so the q heads of one kv
// group run side by side and share their K/V through L2. Odd waves run reversed (CTA c takes the
// wave's (width - 1 - c)-th tile): with costs falling along the order, the CTA that drew the
// dearest tile of one wave draws the cheapest of the next, so per-CTA totals stay within about
// one tile of each other instead of drifting apart by a wave's cost spread every wave.
#pragma once

#include "cuda/params.hpp"

namespace flashflex::sm90 {

struct FwdTile {
  int m;  // q tile (rows m * 128 ..)
  int h;  // q head
  int b;  // batch
};

class FwdTileScheduler {
 public:
  __device__ explicit FwdTileScheduler(const cuda::FwdParams& p)
      : bh_count_(p.batch * p.q_heads), heads_(p.q_heads), num_q_tiles_(p.num_q_tiles),
        num_tiles_(p.num_q_tiles * p.batch * p.q_heads) {}

  __device__ int first() const { return static_cast<int>(blockIdx.x); }
  __device__ int next(int t) const { return t + static_cast<int>(gridDim.x); }
  __device__ bool valid(int t) const { return t < num_tiles_; }

  __device__ FwdTile tile(int t) const {
    const int g = static_cast<int>(gridDim.x);
    const int wave = t / g;
    if (wave & 1) {
      const int width = min(g, num_tiles_ - wave * g);
      t = wave * g + (width - 1 - (t - wave * g));
    }
    const int bh = t % bh_count_;
    return {num_q_tiles_ - 1 - t / bh_count_, bh % heads_, bh / heads_};
  }

 private:
  int bh_count_, heads_, num_q_tiles_, num_tiles_;
};

}  // namespace flashflex::sm90
