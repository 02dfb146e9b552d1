// Thin PTX wrappers over mma.sync m16n8k16 (sm_80+) with fp32 accumulation, for bf16 and fp16
// operands, and the packing of fp32 pairs into the 16-bit register pairs the operands use.
//
// Fragment layouts (g = lane / 4, t = lane % 4; each operand register holds two 16-bit values,
// the lower column index in the low half):
//   A (16 x 16, row-major): a0 (g, 2t..2t+1)   a1 (g+8, 2t..)   a2 (g, 2t+8..)   a3 (g+8, 2t+8..)
//   B (16 x 8, "col"):      b0 (k 2t..2t+1, n g)   b1 (k 2t+8..2t+9, n g)
//   C, D (16 x 8, fp32):    c0 c1 (g, 2t..2t+1)    c2 c3 (g+8, 2t..2t+1)
// So the accumulators of two adjacent n-tiles (columns 16j .. 16j+15) repacked as 16-bit pairs
// are exactly the A fragment of k-step j of the next product (P kept in registers for P V).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace flashflex::ptx {

// d += a * b, fp32 accumulators; Element is __nv_bfloat16 or __half.
template <typename Element>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  static_assert(std::is_same_v<Element, __nv_bfloat16> || std::is_same_v<Element, __half>,
                "mma_m16n8k16: Element must be __nv_bfloat16 or __half");
  if constexpr (std::is_same_v<Element, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two fp32 values rounded to nearest-even into one register of two Elements (lo in the low half).
template <typename Element>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  static_assert(std::is_same_v<Element, __nv_bfloat16> || std::is_same_v<Element, __half>,
                "pack2: Element must be __nv_bfloat16 or __half");
  if constexpr (std::is_same_v<Element, __nv_bfloat16>) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
}

// The inverse of pack2: one register of two Elements (lo in the low half) as two fp32 values.
template <typename Element>
__device__ __forceinline__ float2 unpack2(uint32_t v) {
  if constexpr (std::is_same_v<Element, __nv_bfloat16>) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v));
  } else {
    return __half22float2(*reinterpret_cast<const __half2*>(&v));
  }
}

}  // namespace flashflex::ptx
