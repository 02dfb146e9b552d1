// The data movement and the two tensor-core products of one sm80 forward step, per warp:
//   load_rows   global -> shared, 16-byte cp.async, rows past the sequence zero-filled
//   gemm_qk     S = Q K^T    (A: Q via ldmatrix, B: K via ldmatrix; fp32 accumulators)
//   gemm_pv     O += P V     (A: P from the S registers repacked to 16 bits, B: V via ldmatrix.trans)
// Warp w owns rows [w * kRowsPerWarp, (w + 1) * kRowsPerWarp) of the q tile as kMSlabs m16
// slabs, and every column of S and O, so softmax statistics need only quad shuffles. The
// pipeline order (which stage, when to wait) is kernel_fwd.cuh's; the layouts are in
// kernel_traits_fwd.cuh; the PTX in src/cuda/ptx/.
#pragma once

#include <cstdint>

#include "cuda/ptx/cp_async.cuh"
#include "cuda/ptx/ldmatrix.cuh"
#include "cuda/ptx/mma.cuh"

namespace flashflex::sm80 {

template <class Traits>
struct MainloopFwd {
  using Element = typename Traits::Element;
  static constexpr int kMSlabs = Traits::kMSlabs;
  static constexpr int kNTilesS = Traits::kNTilesS;
  static constexpr int kNTilesO = Traits::kNTilesO;
  static constexpr int kRowBytes = Traits::kHeadDim * sizeof(Element);

  // Issues the cp.async of rows [row0, row0 + kRows) of a [len, kHeadDim] matrix with row stride
  // `stride` (elements) into a swizzled shared tile; rows at or past `len` become zeros. Each
  // thread copies one 16-byte chunk column; its rows are kRowsPerPass apart (a multiple of 8, so
  // the swizzle is the same for all of them).
  template <int kRows>
  __device__ static void load_rows(Element* smem, const Element* gmem, int64_t stride, int row0, int len,
                                   int tid) {
    constexpr int kRowsPerPass = Traits::kNumThreads / Traits::kChunksPerRow;
    static_assert(kRows % kRowsPerPass == 0 && kRowsPerPass % 8 == 0, "whole passes, swizzle-invariant rows");
    const int chunk = tid % Traits::kChunksPerRow;
    const int r0 = tid / Traits::kChunksPerRow;
    const Element* src = gmem + (row0 + r0) * stride + chunk * Traits::kChunkElems;
    const uint32_t dst = ptx::smem_addr(smem + Traits::swizzle(r0, chunk));
#pragma unroll
    for (int pass = 0; pass < kRows / kRowsPerPass; ++pass) {
      const bool valid = row0 + r0 + pass * kRowsPerPass < len;
      ptx::cp_async_16(dst + pass * kRowsPerPass * kRowBytes, valid ? src : gmem, valid);
      src += kRowsPerPass * stride;
    }
  }

  // ldmatrix addressing. Tiles start 1 KiB-aligned and rows are kRowBytes (a power of two >= 128),
  // so logical chunk 2*i + c of a row r (c in {0, 1}) sits at byte
  //   tile + r * kRowBytes + ((2i + c) ^ (r % 8)) * 16  ==  base ^ (i * 32),
  //   base = tile + r * kRowBytes + (c ^ (r % 8)) * 16,
  // and adding whole 16-row slabs (a multiple of kRowBytes * 16) commutes with that xor. One base
  // register per operand; every k-step is an xor with an immediate.
  __device__ static uint32_t lane_base(const Element* tile, int row, int c) {
    return ptx::smem_addr(tile) + row * kRowBytes + ((c ^ (row & 7)) * 16);
  }

  // Q x4: rows {0-7, 8-15} x chunks {2i, 2i+1} of the warp's slab -> a0..a3.
  __device__ static uint32_t q_base(const Element* sQ, int warp, int lane) {
    return lane_base(sQ, warp * Traits::kRowsPerWarp + (lane & 7) + ((lane >> 3) & 1) * 8, lane >> 4);
  }
  // K x4: kv rows {0-7} x chunks {2i, 2i+1}, then kv rows {8-15} -> b0 b1 of two n8 tiles.
  __device__ static uint32_t k_base(const Element* sK, int lane) {
    return lane_base(sK, (lane & 7) + (lane >> 4) * 8, (lane >> 3) & 1);
  }
  // V x4.trans: kv rows {0-7, 8-15} x d chunks {2i, 2i+1} -> b0 b1 of two n8 tiles of d.
  __device__ static uint32_t v_base(const Element* sV, int lane) {
    return lane_base(sV, (lane & 7) + ((lane >> 3) & 1) * 8, lane >> 4);
  }

  // acc_s = Q K^T over the full head dim for this warp's slabs (bases from q_base / k_base).
  __device__ static void gemm_qk(float (&acc_s)[kMSlabs][kNTilesS][4], uint32_t q_addr, uint32_t k_addr) {
#pragma unroll
    for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
      for (int t = 0; t < kNTilesS; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_s[s][t][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < Traits::kHeadDim / 16; ++ks) {
      uint32_t a[kMSlabs][4];
#pragma unroll
      for (int s = 0; s < kMSlabs; ++s) ptx::ldmatrix_x4(a[s], (q_addr ^ (ks * 32)) + s * 16 * kRowBytes);
#pragma unroll
      for (int np = 0; np < kNTilesS / 2; ++np) {
        uint32_t b[4];
        ptx::ldmatrix_x4(b, (k_addr ^ (ks * 32)) + np * 16 * kRowBytes);
#pragma unroll
        for (int s = 0; s < kMSlabs; ++s) {
          ptx::mma_m16n8k16<Element>(acc_s[s][2 * np], a[s], b[0], b[1]);
          ptx::mma_m16n8k16<Element>(acc_s[s][2 * np + 1], a[s], b[2], b[3]);
        }
      }
    }
  }

  // Q's A fragments for every k-step, read once (kQInRegs): qf[s][ks] as in gemm_qk.
  static constexpr int kKSteps = Traits::kHeadDim / 16;
  __device__ static void load_q_frags(uint32_t (&qf)[kMSlabs][kKSteps][4], uint32_t q_addr) {
#pragma unroll
    for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
      for (int ks = 0; ks < kKSteps; ++ks) ptx::ldmatrix_x4(qf[s][ks], (q_addr ^ (ks * 32)) + s * 16 * kRowBytes);
  }

  // acc_s = Q K^T with Q from registers (load_q_frags).
  __device__ static void gemm_qk(float (&acc_s)[kMSlabs][kNTilesS][4], const uint32_t (&qf)[kMSlabs][kKSteps][4],
                                 uint32_t k_addr) {
#pragma unroll
    for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
      for (int t = 0; t < kNTilesS; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_s[s][t][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks)
#pragma unroll
      for (int np = 0; np < kNTilesS / 2; ++np) {
        uint32_t b[4];
        ptx::ldmatrix_x4(b, (k_addr ^ (ks * 32)) + np * 16 * kRowBytes);
#pragma unroll
        for (int s = 0; s < kMSlabs; ++s) {
          ptx::mma_m16n8k16<Element>(acc_s[s][2 * np], qf[s][ks], b[0], b[1]);
          ptx::mma_m16n8k16<Element>(acc_s[s][2 * np + 1], qf[s][ks], b[2], b[3]);
        }
      }
  }

  // acc_o += P V with P = acc_s (fp32 probabilities) rounded to Element and repacked, k-step by
  // k-step, as A fragments (n-tiles 2kk and 2kk+1, see ptx/mma.cuh); base from v_base.
  __device__ static void gemm_pv(float (&acc_o)[kMSlabs][kNTilesO][4], const float (&acc_s)[kMSlabs][kNTilesS][4],
                                 uint32_t v_addr) {
#pragma unroll
    for (int kk = 0; kk < Traits::kBlockN / 16; ++kk) {
      uint32_t a[kMSlabs][4];
#pragma unroll
      for (int s = 0; s < kMSlabs; ++s) {
        a[s][0] = ptx::pack2<Element>(acc_s[s][2 * kk][0], acc_s[s][2 * kk][1]);
        a[s][1] = ptx::pack2<Element>(acc_s[s][2 * kk][2], acc_s[s][2 * kk][3]);
        a[s][2] = ptx::pack2<Element>(acc_s[s][2 * kk + 1][0], acc_s[s][2 * kk + 1][1]);
        a[s][3] = ptx::pack2<Element>(acc_s[s][2 * kk + 1][2], acc_s[s][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < kNTilesO / 2; ++dp) {
        uint32_t b[4];
        ptx::ldmatrix_x4_trans(b, (v_addr ^ (dp * 32)) + kk * 16 * kRowBytes);
#pragma unroll
        for (int s = 0; s < kMSlabs; ++s) {
          ptx::mma_m16n8k16<Element>(acc_o[s][2 * dp], a[s], b[0], b[1]);
          ptx::mma_m16n8k16<Element>(acc_o[s][2 * dp + 1], a[s], b[2], b[3]);
        }
      }
    }
  }
};

}  // namespace flashflex::sm80
