// Tile-level wgmma products of the sm_90 kernels over 128-byte-swizzled shared tiles (column
// blocks of 64 16-bit elements, each rows x 128 bytes; kernel_traits_*.cuh), shared by the
// forward (mainloop_fwd.cuh) and the backward (mainloop_bwd.cuh):
//   gemm_ss_kmajor   acc (=) A B^T over kK: A = 64 rows, B = kN rows, both K-major (the head dim)
//   gemm_rs_nmajor   acc += A B: A from registers (kKSteps k16 fragments), B N-major
//   pack_a           fp32 accumulators of a 64 x (16 kKSteps) tile -> 16-bit RS A fragments
// Each issues only; the caller commits and waits.
#pragma once

#include <cstdint>

#include "cuda/ptx/mma.cuh"
#include "cuda/ptx/wgmma.cuh"

namespace flashflex::sm90 {

// a, b: the tiles' first rows (shared addresses); *_block_bytes: the distance of their column blocks.
template <typename Element, int kN, int kK>
__device__ __forceinline__ void gemm_ss_kmajor(float (&acc)[kN / 2], uint32_t a, uint32_t a_block_bytes, uint32_t b,
                                               uint32_t b_block_bytes) {
  const uint64_t a0 = ptx::gmma_desc_sw128(a, 16, 1024);
  const uint64_t b0 = ptx::gmma_desc_sw128(b, 16, 1024);
  ptx::wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < kK / 16; ++ks) {
    // k16 step ks: column block ks / 4, 32 bytes per step inside the 128-byte swizzled row.
    const uint32_t a_off = (ks / 4) * a_block_bytes + (ks % 4) * 32;
    const uint32_t b_off = (ks / 4) * b_block_bytes + (ks % 4) * 32;
    ptx::wgmma_ss<Element, kN>(acc, a0 + (a_off >> 4), b0 + (b_off >> 4), ks > 0 ? 1 : 0);
  }
}

// B: [16 kKSteps rows][kN] in column blocks b_block_bytes apart (rows of N contiguous).
template <typename Element, int kN, int kKSteps>
__device__ __forceinline__ void gemm_rs_nmajor(float (&acc)[kN / 2], const uint32_t (&a)[kKSteps][4], uint32_t b,
                                               uint32_t b_block_bytes) {
  const uint64_t b0 = ptx::gmma_desc_sw128(b, b_block_bytes, 1024);
  ptx::wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < kKSteps; ++kk) {
    ptx::wgmma_rs_tb<Element, kN>(acc, a[kk], b0 + ((kk * 16 * 128) >> 4), 1);
  }
}

// The k16 step kk of the A operand spans the accumulator's n8 tiles 2kk and 2kk + 1 (the
// mma.sync A fragment order).
template <typename Element, int kKSteps>
__device__ __forceinline__ void pack_a(uint32_t (&a)[kKSteps][4], const float (&acc)[kKSteps * 8]) {
#pragma unroll
  for (int kk = 0; kk < kKSteps; ++kk) {
    a[kk][0] = ptx::pack2<Element>(acc[8 * kk + 0], acc[8 * kk + 1]);
    a[kk][1] = ptx::pack2<Element>(acc[8 * kk + 2], acc[8 * kk + 3]);
    a[kk][2] = ptx::pack2<Element>(acc[8 * kk + 4], acc[8 * kk + 5]);
    a[kk][3] = ptx::pack2<Element>(acc[8 * kk + 6], acc[8 * kk + 7]);
  }
}

// The 1 KiB-aligned start of the dynamic shared window (the 128-byte swizzle needs 1 KiB-aligned
// atoms; the launches add 1 KiB of slack) as a layout of kernel_traits_*.cuh: Smem{base, ptr}.
template <class Smem>
__device__ __forceinline__ Smem aligned_smem(unsigned char* smem_raw) {
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t base = (raw + 1023u) & ~1023u;
  return Smem{base, smem_raw + (base - raw)};
}

}  // namespace flashflex::sm90
