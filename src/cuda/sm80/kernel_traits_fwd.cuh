// Tile shapes and shared-memory layout of the sm80 forward (FlashAttention-2 scheme): a CTA owns
// kBlockM rows of q (a 128-row BlockMask tile row, or half of one), its warps split along M only, and walks kv in
// steps of kBlockN columns (a divisor of the 128-column mask tile) through a kStages-deep
// cp.async ring for K and V. The per-(dtype, head dim) choices live in FwdConfig below, with
// their reasons; kernel_fwd.cuh composes mainloop_fwd.cuh, softmax.cuh, mask_fwd.cuh,
// block_iter_fwd.cuh and epilogue_fwd.cuh over these traits.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "flashflex/block_mask.hpp"
#include "flashflex/mods.hpp"

namespace flashflex::sm80 {

template <typename Element_, int kHeadDim_, int kBlockN_, int kNumWarps_, int kMinBlocksPerSm_,
          bool kQInRegs_ = false, int kBlockM_ = kTileSize>
struct FwdTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;  // a mask tile row (128) or half of one (64) per CTA
  static constexpr int kMBlocksPerTile = kTileSize / kBlockM;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kNumWarps = kNumWarps_;
  static constexpr int kNumThreads = kNumWarps * 32;
  static constexpr int kMinBlocksPerSm = kMinBlocksPerSm_;
  static constexpr int kStages = 2;  // K/V double buffer: step i+1 loads while step i computes
  // Q's A fragments held in registers for the whole kv loop (D/16 x 4 per slab) instead of
  // re-read from shared memory every step: a fifth less shared traffic in Q K^T at one slab.
  static constexpr bool kQInRegs = kQInRegs_;

  static constexpr int kRowsPerWarp = kBlockM / kNumWarps;
  static constexpr int kMSlabs = kRowsPerWarp / 16;       // m16 MMA slabs per warp
  static constexpr int kNTilesS = kBlockN / 8;            // n8 tiles of S per slab
  static constexpr int kNTilesO = kHeadDim / 8;           // n8 tiles of O per slab
  static constexpr int kSubSteps = kTileSize / kBlockN;   // steps per 128-column mask tile
  static constexpr int kBitmapWordsPerStep = kBlockN / 32;

  // Shared memory: rows of kHeadDim elements cut into 16-byte chunks; chunk c of row r lives at
  // chunk (c ^ (r % 8)) so that the 8 row addresses of every ldmatrix hit 8 distinct bank groups.
  static constexpr int kChunkElems = 16 / sizeof(Element);
  static constexpr int kChunksPerRow = kHeadDim / kChunkElems;
  static constexpr int kQElems = kBlockM * kHeadDim;
  static constexpr int kKVElems = kBlockN * kHeadDim;
  // Bitmap words of a partial step (kBitmapWordsPerStep per q row), one slot per stage, behind V.
  static constexpr int kBitsWords = kBlockM * kBitmapWordsPerStep;
  // With Q in registers, the Q tile needs shared memory only before the kv loop (to build the
  // fragments) and after it (to stage O): it then lives in K's second stage, which no step uses
  // until every warp has read its Q fragments (kernel_fwd.cuh), instead of a region of its own.
  static constexpr bool kQAliasesK = kQInRegs && kKVElems >= kQElems;
  static constexpr int kQOwnElems = kQAliasesK ? 0 : kQElems;
  static constexpr int kSmemBytes =
      (kQOwnElems + 2 * kStages * kKVElems) * sizeof(Element) + kStages * kBitsWords * sizeof(uint32_t);

  static_assert(kTileSize % kBlockN == 0 && kBlockN % 32 == 0, "kBlockN must divide the mask tile, >= 32");
  static_assert(kBlockM == kTileSize || kBlockM == kTileSize / 2, "a CTA owns a mask tile row or half of one");
  static_assert(kRowsPerWarp % 16 == 0, "each warp owns whole m16 slabs");
  static_assert(kHeadDim % 64 == 0, "the swizzle needs at least 8 chunks of 16 bytes per row");
  static_assert((kBlockN * kChunksPerRow) % kNumThreads == 0 && (kBlockM * kChunksPerRow) % kNumThreads == 0,
                "tile loads split evenly over the threads");

  // Element offset of (row, first element of logical 16-byte chunk `chunk`) in a swizzled tile.
  __device__ static __forceinline__ int swizzle(int row, int chunk) {
    return row * kHeadDim + ((chunk ^ (row & 7)) * kChunkElems);
  }
};

// The one place the tile shapes are chosen (measurements: bench/NOTES.md; register budget:
// ptxas -v, zero spills required for every instantiation).
//   hdim  64: 128 x 64,  4 warps of 32 rows (2 m16 slabs), 2 CTAs / SM.
//   hdim 128: 128 x 128, 8 warps of 16 rows, Q in registers, Q aliasing K's stage 1: 132 KiB
//             smem, 1 CTA / SM: the fastest spill-free shape of the H100 sweep
//             (bench/NOTES.md, the tile sweep; 4 warps of 32 rows at 128 x 64 ran ~7% faster but spills).
//             The bias mod (a global load per score) does not fit its registers: 128 x 64,
//             8 warps, Q in shared memory.
//   hdim 256: 128 x 32,  8 warps of 16 rows, 129 KiB smem (fits the 163 KiB of an A100),
//             1 CTA / SM (O alone is 128 fp32 registers).
template <typename Element, int kHeadDim, ScoreModKind kMod>
struct FwdConfig;
template <typename Element, ScoreModKind kMod>
struct FwdConfig<Element, 64, kMod> {
  using Traits = FwdTraits<Element, 64, 64, 4, 2>;
};
template <typename Element, ScoreModKind kMod>
struct FwdConfig<Element, 128, kMod> {
  using Traits = std::conditional_t<kMod == ScoreModKind::kBias || kMod == ScoreModKind::kLinked, FwdTraits<Element, 128, 64, 8, 1>,
                                    FwdTraits<Element, 128, 128, 8, 1, /*kQInRegs=*/true>>;
};
template <typename Element, ScoreModKind kMod>
struct FwdConfig<Element, 256, kMod> {
  using Traits = FwdTraits<Element, 256, 32, 8, 1>;
};

}  // namespace flashflex::sm80
