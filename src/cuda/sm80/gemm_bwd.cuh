// Warp-level GEMMs of the sm80 backward (mma.sync m16n8k16, fp32 accumulators, operands from
// swizzled shared memory through ldmatrix; fragment layouts in src/cuda/ptx/mma.cuh). Called by
// mainloop_bwd.cuh with the warp's tile origin; tile geometry from kernel_traits_bwd.cuh.
//   gemm_abt:     C[M x N] += A[M x K] * B[N x K]^T     A, B stored row-major (K contiguous)
//   gemm_atb:     C[M x N] += A[K x M]^T * B[K x N]     A, B stored row-major (M / N contiguous)
//   gemm_ab:      C[M x N] += A[M x K] * B[K x N]       A row-major (K), B row-major (N)
#pragma once

#include <cstdint>

#include "cuda/ptx/ldmatrix.cuh"
#include "cuda/ptx/mma.cuh"
#include "cuda/sm80/kernel_traits_bwd.cuh"

namespace flashflex::sm80 {

// Per-lane shared addresses of the x4 ldmatrix loads (byte addresses, 16-bit elements). Each
// operand gets a base address, that of its first fragment at depth k0 = 0; every other fragment
// address derives from it by constants, so that a GEMM holds one or a few address registers:
//   k-contiguous tiles (A [m][k], B [n][k], plain loads): depth k0 moves the 16-byte chunk, which
//     the swizzle XORs with row % 8: addr = (base ^ ((k0 % 64) * 2)) + (k0 / 64) * 128 + f * 16 rows
//     (rows are multiples of 128 bytes, so the XOR touches only the chunk bits);
//   m/n-contiguous tiles (A [k][m], B [k][n], transposed loads): depth k0 moves whole rows (a
//     multiple of 8, leaving the swizzle unchanged): addr = base + k0 * row bytes; each fragment of
//     16 columns has its own base.
// A (m16 x k16) of a [m][k] tile, first fragment at row m0.
template <int kRowLen>
__device__ __forceinline__ uint32_t a_base(uint32_t tile, int lane, int m0) {
  return tile + 2u * swizzle<kRowLen>(m0 + (lane & 15), (lane >> 4) << 3);
}
// B (two n8 tiles, k16) of a [n][k] tile, first fragment at row n0.
template <int kRowLen>
__device__ __forceinline__ uint32_t bt_base(uint32_t tile, int lane, int n0) {
  return tile + 2u * swizzle<kRowLen>(n0 + (lane & 7) + ((lane >> 4) << 3), ((lane >> 3) & 1) << 3);
}
// Fragment f (16 rows further per f) at depth k0 of a k-contiguous operand.
template <int kRowLen>
__device__ __forceinline__ uint32_t k_contig_addr(uint32_t base, int f, int k0) {
  return (base ^ static_cast<uint32_t>((k0 & 63) * 2)) + static_cast<uint32_t>((k0 & ~63) * 2 + f * 16 * kRowLen * 2);
}
// A (m16 x k16) of a [k][m] tile at column m0 (transposed load).
template <int kRowLen>
__device__ __forceinline__ uint32_t at_base(uint32_t tile, int lane, int m0) {
  return tile + 2u * swizzle<kRowLen>((lane & 7) + ((lane >> 4) << 3), m0 + (((lane >> 3) & 1) << 3));
}
// B (k16, two n8 tiles) of a [k][n] tile at column n0 (transposed load).
template <int kRowLen>
__device__ __forceinline__ uint32_t b_base(uint32_t tile, int lane, int n0) {
  return tile + 2u * swizzle<kRowLen>((lane & 7) + (((lane >> 3) & 1) << 3), n0 + ((lane >> 4) << 3));
}

template <int kFragsM, int kFragsN>
__device__ __forceinline__ void zero(float (&c)[kFragsM][kFragsN][4]) {
#pragma unroll
  for (int mi = 0; mi < kFragsM; ++mi)
#pragma unroll
    for (int ni = 0; ni < kFragsN; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) c[mi][ni][e] = 0.f;
}

template <typename T, int kFragsM, int kFragsN>
__device__ __forceinline__ void mma_tile(float (&c)[kFragsM][kFragsN][4], const uint32_t (&a)[kFragsM][4],
                                         const uint32_t (&b)[kFragsN / 2][4]) {
#pragma unroll
  for (int mi = 0; mi < kFragsM; ++mi)
#pragma unroll
    for (int ni = 0; ni < kFragsN; ++ni)
      ptx::mma_m16n8k16<T>(c[mi][ni], a[mi], b[ni / 2][(ni & 1) * 2], b[ni / 2][(ni & 1) * 2 + 1]);
}

// Base addresses may carry an offset of a multiple of 128 bytes (another tile of the same shape,
// another pipeline stage); the transposed-load GEMMs take it separately (a_off, b_off).
// C += A * B^T over K = kDepth: a (a_base of the A tile), b (bt_base of the B tile).
template <typename T, int kFragsM, int kFragsN, int kDepth, int kLenA, int kLenB>
__device__ __forceinline__ void gemm_abt(float (&c)[kFragsM][kFragsN][4], uint32_t a, uint32_t b) {
#pragma unroll
  for (int k0 = 0; k0 < kDepth; k0 += 16) {
    uint32_t af[kFragsM][4], bf[kFragsN / 2][4];
#pragma unroll
    for (int mi = 0; mi < kFragsM; ++mi) ptx::ldmatrix_x4(af[mi], k_contig_addr<kLenA>(a, mi, k0));
#pragma unroll
    for (int np = 0; np < kFragsN / 2; ++np) ptx::ldmatrix_x4(bf[np], k_contig_addr<kLenB>(b, np, k0));
    mma_tile<T>(c, af, bf);
  }
}

// C += A^T * B over K = kDepth: a[mi] (at_base per m16 fragment), b[np] (b_base per 16 columns).
template <typename T, int kFragsM, int kFragsN, int kDepth, int kLenA, int kLenB>
__device__ __forceinline__ void gemm_atb(float (&c)[kFragsM][kFragsN][4], const uint32_t (&a)[kFragsM],
                                         uint32_t a_off, const uint32_t (&b)[kFragsN / 2], uint32_t b_off) {
#pragma unroll
  for (int k0 = 0; k0 < kDepth; k0 += 16) {
    uint32_t af[kFragsM][4], bf[kFragsN / 2][4];
#pragma unroll
    for (int mi = 0; mi < kFragsM; ++mi) ptx::ldmatrix_x4_trans(af[mi], a[mi] + a_off + k0 * kLenA * 2);
#pragma unroll
    for (int np = 0; np < kFragsN / 2; ++np) ptx::ldmatrix_x4_trans(bf[np], b[np] + b_off + k0 * kLenB * 2);
    mma_tile<T>(c, af, bf);
  }
}

// C += A * B over K = kDepth: a (a_base of the A tile), b[np] (b_base per 16 columns).
template <typename T, int kFragsM, int kFragsN, int kDepth, int kLenA, int kLenB>
__device__ __forceinline__ void gemm_ab(float (&c)[kFragsM][kFragsN][4], uint32_t a, const uint32_t (&b)[kFragsN / 2],
                                        uint32_t b_off) {
#pragma unroll
  for (int k0 = 0; k0 < kDepth; k0 += 16) {
    uint32_t af[kFragsM][4], bf[kFragsN / 2][4];
#pragma unroll
    for (int mi = 0; mi < kFragsM; ++mi) ptx::ldmatrix_x4(af[mi], k_contig_addr<kLenA>(a, mi, k0));
#pragma unroll
    for (int np = 0; np < kFragsN / 2; ++np) ptx::ldmatrix_x4_trans(bf[np], b[np] + b_off + k0 * kLenB * 2);
    mma_tile<T>(c, af, bf);
  }
}

}  // namespace flashflex::sm80
