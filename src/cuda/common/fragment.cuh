// The accumulator fragment that mma.sync m16n8 (sm_80) and wgmma m64nN (sm_90, per warp) share:
// a warp owns 16-row slabs; in slab s, n-tile t (8 columns), element e of a thread sits at
//   row s * 16 + lane / 4 + 8 * (e / 2),   column t * 8 + 2 * (lane % 4) + e % 2,
// held as float acc[kMSlabs][kNTiles][4]. A row's 4 threads form one quad (lanes 4r .. 4r + 3).
// The shared math (online_softmax.cuh, mask_apply.cuh, row_local_fold.cuh) is written over this
// layout, so it serves both architectures.
#pragma once

namespace flashflex::cuda {

template <int kMSlabs_, int kNTiles_>
struct AccFragment {
  static constexpr int kMSlabs = kMSlabs_;
  static constexpr int kNTiles = kNTiles_;
  using Array = float[kMSlabs][kNTiles][4];

  // Row and column of element (s, t, e) relative to the warp's first row and the tile's first column.
  __device__ static constexpr int row(int s, int e, int lane) { return s * 16 + (lane >> 2) + (e >> 1) * 8; }
  __device__ static constexpr int col(int t, int e, int lane) { return t * 8 + (lane & 3) * 2 + (e & 1); }
};

// The fragment view of a flat per-thread accumulator of one 16-row slab (the wgmma wrappers of
// ptx/wgmma.cuh take float[kNTiles * 4]: element 4 t + e is element (0, t, e) here).
template <int kN>
__device__ __forceinline__ auto& as_fragment(float (&flat)[kN]) {
  static_assert(kN % 4 == 0, "four elements per n8 tile");
  return reinterpret_cast<float(&)[1][kN / 4][4]>(flat);
}

}  // namespace flashflex::cuda
