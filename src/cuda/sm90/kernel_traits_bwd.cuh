// Tile shapes and shared-memory layout of the sm_90a backward main kernel (FlashAttention-3's
// scheme, ../shared/KERNEL_NOTES.md §3): one CTA per kv tile of kBlockN = 128 keys (one BlockMask
// tile column), a producer warpgroup (one thread issues the TMA loads) and two consumer
// warpgroups, each owning 64 of the keys (wgmma M = 64 over the key rows: S^T, dP^T, dK, dV).
// The CTA walks q steps of kBlockM rows; Q, dO, their row statistics, a partial step's bitmap rows
// and the step's description travel through a kStages ring. Every 16-bit tile row is 128-byte
// swizzled in blocks of 64 columns (TMA's SWIZZLE_128B box, read by wgmma through
// gmma_desc_sw128): a [rows, cols] tile is cols / 64 column blocks of rows x 128 bytes.
//
// Per consumer warpgroup and step (kernel_bwd.cuh):
//   S^T, dP^T [64 keys x kBlockM]  SS wgmma, N = kBlockM        (K, V rows; Q, dO K-major)
//   dV, dK    [64 keys x D]        RS wgmma, N = D, k = kBlockM (P^T, dS^T from registers)
//   dQ        [64 x D / 2] of the step's [64 x D]: SS wgmma from the dS^T tile in shared memory
//             (both warpgroups' keys, k = 128) and K, both operands MN-major; the warpgroups
//             split D.
//   dQ's fp32 tile goes through a shared staging box to the copy engine's reduce-add.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "flashflex/block_mask.hpp"

namespace flashflex::sm90 {

template <typename Element_, int kHeadDim_, int kBlockM_, int kStages_>
struct BwdTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;   // q rows per step
  static constexpr int kBlockN = kTileSize;  // keys per CTA
  static constexpr int kStages = kStages_;
  static constexpr int kConsumerWGs = 2;
  static constexpr int kConsumerThreads = kConsumerWGs * 128;
  static constexpr int kNumThreads = 128 + kConsumerThreads;
  // 24 * 128 + 240 * 256 = 168 * 384: setmaxnreg moves registers inside the CTA's launch
  // allocation (168 per thread), an increase past it waits forever.
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = 240;

  static constexpr int kColBlocks = kHeadDim / 64;    // 64-column swizzle blocks of a Q / K row
  static constexpr int kNTilesS = kBlockM / 8;        // n8 tiles of S^T per thread row pair
  static constexpr int kKSteps = kBlockM / 16;        // k16 steps of the dV / dK products
  static constexpr int kNTilesKV = kHeadDim / 8;
  // The warpgroups split the step's dQ [kBlockM x D] by columns: kDqCols each.
  static constexpr int kDqCols = kHeadDim / kConsumerWGs;
  static constexpr int kDqBoxes = kDqCols / 32;  // boxes of the dQ map (32 fp32 columns)

  static constexpr uint32_t kQBlockBytes = kBlockM * 128;  // one column block of a Q (or dO) stage
  static constexpr uint32_t kQBytes = kQBlockBytes * kColBlocks;
  static constexpr uint32_t kKVBlockBytes = kBlockN * 128;
  static constexpr uint32_t kKVBytes = kKVBlockBytes * kColBlocks;
  static constexpr uint32_t kDsBytes = kBlockN * 128;     // dS^T [128 keys][64 q rows]
  static constexpr uint32_t kDqBoxBytes = kBlockM * 128;   // kBlockM rows x 32 fp32 (the dQ map's box)
  static constexpr uint32_t kDqWGBytes = kDqBoxes * kDqBoxBytes;  // one warpgroup's dQ columns
  static constexpr uint32_t kStatBytes = 2 * kBlockM * 4;   // LSE2 then dpsum of a stage
  static constexpr uint32_t kBitsBytes = kBlockM * kBitmapWordsPerRow * 4;  // the step's bitmap rows
  static constexpr uint32_t kStepBytes = 64;                // cuda::BwdStep of a stage

  // Byte offsets from the 1 KiB-aligned base (every tile on a 1 KiB boundary, the swizzle's period).
  static constexpr uint32_t kKOff = 0;
  static constexpr uint32_t kVOff = kKOff + kKVBytes;
  static constexpr uint32_t kQOff = kVOff + kKVBytes;            // kStages stages
  static constexpr uint32_t kDoOff = kQOff + kStages * kQBytes;  // kStages stages
  static constexpr uint32_t kDsOff = kDoOff + kStages * kQBytes; // 2 buffers (kernel_bwd.cuh says why)
  static constexpr uint32_t kDqOff = kDsOff + 2 * kDsBytes;      // kConsumerWGs staging tiles
  static constexpr uint32_t kStatOff = kDqOff + kConsumerWGs * kDqWGBytes;
  static constexpr uint32_t kBitsOff = kStatOff + kStages * kStatBytes;
  static constexpr uint32_t kStepOff = kBitsOff + kStages * kBitsBytes;
  static constexpr uint32_t kBarOff = kStepOff + kStages * kStepBytes;
  static constexpr int kNumBars = 1 + 2 * kStages;  // K and V; per stage full / empty
  static constexpr int kSmemBytes = kBarOff + kNumBars * 8 + 1024;  // + alignment slack

  static_assert(kHeadDim == 64 || kHeadDim == 128, "sm90 backward: head dims 64 and 128");
  static_assert(kBlockM == 64, "q step: 64 rows (one column block of dS^T, wgmma M of dQ)");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory of one sm_90 CTA");
};

// The tile table (bf16 / fp16 alike; one CTA of 384 threads per SM): 128 keys x 64 q rows per
// step (FA3's hdim-128 shape). At hdim 128 dK, dV take 128 of the 240 registers, S^T and dP^T of
// a 64-row step another 64; 2 stages (195 KiB; a third does not fit). At hdim 64 a step is half
// as long for the same load latency: 3 stages (134 KiB). A 128-row step at hdim 64 (S^T and dP^T
// 64 registers each) spilled and serialized its wgmma under ptxas 13.0.
template <typename Element, int kHeadDim>
struct BwdConfig {
  using Traits = BwdTraits<Element, kHeadDim, 64, kHeadDim == 64 ? 3 : 2>;
};

}  // namespace flashflex::sm90
