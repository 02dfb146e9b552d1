// Tile shapes and shared-memory layout of the sm_90a forward (FlashAttention-3 scheme): a CTA of
// one producer warpgroup (one thread issues the TMA loads) and two consumer warpgroups, each
// owning 64 of the q tile's kBlockM = 128 rows (one BlockMask tile row) with wgmma M = 64. kv is
// walked in steps of kBlockN columns (a divisor of the 128-column mask tile) through kStages-deep
// rings for K and V. Every tile row is 128-byte swizzled in blocks of 64 columns (TMA's
// SWIZZLE_128B box, which wgmma reads through gmma_desc_sw128): a [rows, D] tile is D / 64
// column blocks of rows x 128 bytes, each a stack of 1 KiB atoms of 8 rows.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "flashflex/block_mask.hpp"
#include "flashflex/mods.hpp"

namespace flashflex::sm90 {

template <typename Element_, int kHeadDim_, int kBlockN_, int kStages_, bool kPingPong_, bool kDynamicTiles_>
struct FwdTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kTileSize;  // one mask tile row per CTA tile
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  // The consumer warpgroups take turns issuing their GEMMs (kernel_fwd.cuh, GemmTurns).
  static constexpr bool kPingPong = kPingPong_;
  // Tiles from a global counter, else the static order (tile_scheduler_fwd.cuh).
  static constexpr bool kDynamicTiles = kDynamicTiles_;
  static constexpr int kConsumerWGs = 2;
  static constexpr int kConsumerThreads = kConsumerWGs * 128;
  static constexpr int kNumThreads = 128 + kConsumerThreads;
  static constexpr int kProducerRegs = 24;   // 24 + 2 * 240 per thread = 168 * 3 warpgroups
  static constexpr int kConsumerRegs = 240;

  static constexpr int kColBlocks = kHeadDim / 64;         // 64-column swizzle blocks per row
  static constexpr int kNTilesS = kBlockN / 8;             // n8 tiles of S per thread row pair
  static constexpr int kNTilesO = kHeadDim / 8;
  static constexpr int kSubSteps = kTileSize / kBlockN;    // steps per 128-column mask tile
  static constexpr int kBitsWordsPerStep = kBlockN / 32;

  static constexpr uint32_t kQBlockBytes = kBlockM * 128;  // one column block of the Q tile
  static constexpr uint32_t kKVBlockBytes = kBlockN * 128;
  static constexpr uint32_t kQBytes = kQBlockBytes * kColBlocks;
  static constexpr uint32_t kKVBytes = kKVBlockBytes * kColBlocks;
  static constexpr uint32_t kBitsBytes = kBitmapWords * 4;  // a partial tile's whole bitmap

  // Byte offsets from the 1 KiB-aligned base: Q, K[kStages], V[kStages], bitmaps[kStages], barriers,
  // the tile channel's two slots (tile_scheduler_fwd.cuh).
  static constexpr uint32_t kQOff = 0;
  static constexpr uint32_t kKOff = kQOff + kQBytes;
  static constexpr uint32_t kVOff = kKOff + kStages * kKVBytes;
  static constexpr uint32_t kBitsOff = kVOff + kStages * kKVBytes;
  static constexpr uint32_t kBarOff = kBitsOff + kStages * kBitsBytes;
  static constexpr int kNumBars = 6 + 4 * kStages;  // q full/empty; k, v full/empty per stage; tile full/empty x 2
  static constexpr uint32_t kTileSlotsOff = (kBarOff + kNumBars * 8 + 15) / 16 * 16;
  static constexpr int kSmemBytes = kTileSlotsOff + 2 * 32 + 1024;  // + alignment slack

  static_assert(kHeadDim % 64 == 0 && kHeadDim <= 256, "head dim: whole 64-column blocks, wgmma N <= 256");
  static_assert(kTileSize % kBlockN == 0 && kBlockN % 64 == 0, "kBlockN: 64 or 128");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory of one sm_90 CTA");
};

// The tile table (bf16 / fp16 alike; 1 CTA per SM, persistent). Times: H200, B=1, 32 / 8 heads,
// bf16, causal 16k, medians of the bring-up timing (bench/NOTES.md, the sm_90 forward):
//   hdim  64: 128 x 128, 3 stages, no ping-pong: 112 KiB. A step is half a hdim-128 step, so
//             loads get a third stage. Ping-pong measured 2.94 ms against 2.84 without: the
//             exp2 of a 128 x 128 step costs as much as its GEMMs at this head dim, so taking
//             turns only delays the issue.
//   hdim 128: 128 x 128, 2 stages, ping-pong: 164 KiB (FA3's causal shape; 3 stages would need
//             228 KiB). Ping-pong 3.57 ms, without 3.74.
//   hdim 256: 128 x 64,  2 stages, ping-pong: 196 KiB: O alone is 128 fp32 registers per thread,
//             and a 128-column K/V stage pair (128 KiB) would not fit beside the 64 KiB Q tile.
//             Ping-pong 6.98 ms, without 7.49.
// Dynamic tile order at hdim 128 only: with it the load thread of hdim 64 (3-stage ring) and
// both sides of hdim 256 spill registers (ptxas -v), so those keep the static order.
template <typename Element, int kHeadDim>
struct FwdConfig;
template <typename Element>
struct FwdConfig<Element, 64> {
  using Traits = FwdTraits<Element, 64, 128, 3, false, false>;
};
template <typename Element>
struct FwdConfig<Element, 128> {
  using Traits = FwdTraits<Element, 128, 128, 2, true, true>;
};
template <typename Element>
struct FwdConfig<Element, 256> {
  using Traits = FwdTraits<Element, 256, 64, 2, true, false>;
};

}  // namespace flashflex::sm90
