// Tile shapes, warp layouts and the shared-memory map of the sm80 backward main kernel
// (mainloop_bwd.cuh), one traits struct per (dtype, head dim). Read by the mainloop, the epilogue
// (epilogue_bwd.cuh) and the host launcher (launch_bwd.cuh).
//
// One CTA owns kBlockN keys (a 128-key mask tile, or half of one at head dim 256) and walks q
// sub-tiles of kBlockM rows. Three GEMM shapes share 8 warps, each with its own warp grid:
//   S, dP   (kBlockM x kBlockN, k = D):  kWarpsSdpM x kWarpsSdpN
//   dK, dV  (kBlockN x D, k = kBlockM):  kWarpsKvN x kWarpsKvD   (accumulators live all CTA long)
//   dQ      (kBlockM x D, k = kBlockN):  kWarpsDqM x kWarpsDqD   (added into the fp32 workspace)
//
// | head dim | kBlockM x kBlockN | S/dP warp tile | dK/dV warp tile | dQ warp tile | smem      |
// | 64       | 64 x 128          | 32 x 32        | 32 x 32         | 32 x 16      |  97.4 KiB |
// | 128      | 64 x 128          | 32 x 32        | 32 x 64         | 32 x 32      | 161.4 KiB |
// | 256      | 32 x 64           | 16 x 16        | 32 x 64         | 16 x 64      | 136.6 KiB |
// (FA2's sm80 choices for 64/128 with kBlockM 64; head dim 256 halves both tiles so that two Q/dO
// stages fit the 163 KiB of an A100. smem counts Q, dO double-buffered, K, V, P, dS, row stats,
// the walk's state and 128 bytes of alignment slack; on sm_90 and newer the dQ staging tiles add
// 33 KiB at head dims 128 and 256, which only Hopper-class shared memory holds.)
#pragma once

#include <cstdint>

namespace flashflex::sm80 {

template <typename T, int kHeadDim_>
struct BwdTraits;

template <typename T_, int kHeadDim_, int kBlockM_, int kBlockN_, int kWarpsSdpM_, int kWarpsKvN_, int kWarpsDqM_,
          int kMinBlocksPerSm_>
struct BwdTraitsBase {
  using T = T_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kNumWarps = 8;
  static constexpr int kNumThreads = kNumWarps * 32;
  static constexpr int kMinBlocksPerSm = kMinBlocksPerSm_;
  static constexpr int kStages = 2;  // Q, dO (and their row statistics) double-buffered

  // S, dP: kBlockM x kBlockN
  static constexpr int kWarpsSdpM = kWarpsSdpM_;
  static constexpr int kWarpsSdpN = kNumWarps / kWarpsSdpM;
  static constexpr int kSdpTileM = kBlockM / kWarpsSdpM;
  static constexpr int kSdpTileN = kBlockN / kWarpsSdpN;
  static constexpr int kSdpFragsM = kSdpTileM / 16;  // m16 tiles per warp
  static constexpr int kSdpFragsN = kSdpTileN / 8;   // n8 tiles per warp
  // dK, dV: kBlockN x kHeadDim
  static constexpr int kWarpsKvN = kWarpsKvN_;
  static constexpr int kWarpsKvD = kNumWarps / kWarpsKvN;
  static constexpr int kKvTileN = kBlockN / kWarpsKvN;
  static constexpr int kKvTileD = kHeadDim / kWarpsKvD;
  static constexpr int kKvFragsN = kKvTileN / 16;
  static constexpr int kKvFragsD = kKvTileD / 8;
  // dQ: kBlockM x kHeadDim
  static constexpr int kWarpsDqM = kWarpsDqM_;
  static constexpr int kWarpsDqD = kNumWarps / kWarpsDqM;
  static constexpr int kDqTileM = kBlockM / kWarpsDqM;
  static constexpr int kDqTileD = kHeadDim / kWarpsDqD;
  static constexpr int kDqFragsM = kDqTileM / 16;
  static constexpr int kDqFragsD = kDqTileD / 8;

  // Per-thread visibility of the S fragment fits one 32-bit word; a warp's S columns fall in one
  // 32-bit word of a bitmap row.
  static constexpr int kSdpElems = kSdpFragsM * kSdpFragsN * 4;
  static_assert(kSdpElems <= 32, "S fragment per thread must fit a 32-bit visibility mask");
  static_assert(kSdpTileN <= 32 && 32 % kSdpTileN == 0, "a warp's S columns must sit in one bitmap word");
  static_assert(kSdpTileN % 16 == 0 && kKvTileD % 16 == 0 && kDqTileD % 16 == 0,
                "B fragments are loaded 16 columns (two n8 tiles) at a time");
  static_assert(kSdpTileM % 16 == 0 && kKvTileN % 16 == 0 && kDqTileM % 16 == 0, "m16 tiles");
  static_assert(128 % kBlockM == 0 && 128 % kBlockN == 0, "tiles subdivide the 128 x 128 mask tiles");
  // The 16-byte-chunk XOR swizzle (swizzle() below) needs rows of at least 8 chunks.
  static_assert(kHeadDim % 64 == 0 && kBlockN % 64 == 0, "swizzled rows must hold at least 64 elements");

  // Shared memory (bytes), every tile row-major and swizzled.
  static constexpr int kQBytes = kBlockM * kHeadDim * 2;   // one stage of Q (same for dO)
  static constexpr int kKBytes = kBlockN * kHeadDim * 2;   // K (same for V)
  static constexpr int kPBytes = kBlockM * kBlockN * 2;    // P (same for dS)
  static constexpr int kStatBytes = kBlockM * 4;           // one stage of LSE2 (same for dP sum)
  static constexpr int kOffK = 0;
  static constexpr int kOffV = kOffK + kKBytes;
  static constexpr int kOffQ = kOffV + kKBytes;            // kStages stages
  static constexpr int kOffDo = kOffQ + kStages * kQBytes;
  static constexpr int kOffP = kOffDo + kStages * kQBytes;
  static constexpr int kOffDs = kOffP + kPBytes;
  static constexpr int kOffLse = kOffDs + kPBytes;         // kStages stages
  static constexpr int kOffDpsum = kOffLse + kStages * kStatBytes;
  static constexpr int kStepsBytes = 160, kWalkBytes = 128;
  static constexpr int kOffSteps = kOffDpsum + kStages * kStatBytes;  // BwdStep[3] (common/q_walk.cuh)
  static constexpr int kOffWalk = kOffSteps + kStepsBytes;            // QWalkState
  static constexpr int kSmemAlign = 128;  // tiles start 128-byte aligned (mainloop_bwd.cuh)
  static constexpr int kSmemBytes = kOffWalk + kWalkBytes + kSmemAlign;
  // sm_90 and newer (mainloop_bwd.cuh, BwdParams::dq_bulk): each warp stages its fp32 dQ tile
  // here as boxes of kDqTileM rows x 32 columns (128-byte rows, the copy engine's 128-byte
  // swizzle, so that the fragment stores hit every bank twice: the 2 wavefronts of 256 bytes) and
  // the copy engine adds them into the workspace. Needs whole 32-column boxes (not head dim 64).
  static constexpr bool kBulkDq = kDqTileD % 32 == 0;
  static constexpr int kDqBoxBytes = kDqTileM * 128;
  static constexpr int kDqWarpStageBytes = kDqTileM * kDqTileD * 4;  // one warp's tile
  static constexpr int kDqStageBytes = kNumWarps * kDqWarpStageBytes;
  // It starts at the first 1 KiB boundary (the swizzle's period) after the walk's state.
  static constexpr int kSmemBytesBulkDq = kBulkDq ? kSmemBytes + 1024 + kDqStageBytes : kSmemBytes;
};

template <typename T>
struct BwdTraits<T, 64> : BwdTraitsBase<T, 64, 64, 128, 2, 4, 2, 1> {};
template <typename T>
struct BwdTraits<T, 128> : BwdTraitsBase<T, 128, 64, 128, 2, 4, 2, 1> {};
template <typename T>
struct BwdTraits<T, 256> : BwdTraitsBase<T, 256, 32, 64, 2, 2, 2, 1> {};

// Element offset of (row, col) in a row-major tile of kRowLen 16-bit elements whose 16-byte
// chunks are XOR-swizzled by row: ldmatrix (8 rows, same chunk) and the fragment stores (8 rows,
// 4 words) hit 32 distinct banks. col must be a multiple of 2 (pairs never straddle a chunk).
template <int kRowLen>
__device__ __forceinline__ int swizzle(int row, int col) {
  return row * kRowLen + ((((col >> 3) ^ (row & 7))) << 3) + (col & 7);
}

}  // namespace flashflex::sm80
