// Thin PTX wrappers over ldmatrix (sm_75+) and stmatrix (sm_90+): warp-collective loads and
// stores of 8x8 tiles of 16-bit elements between shared memory and mma fragment registers.
//
// xN: lanes 8i .. 8i+7 give the row addresses (16 bytes each, 16-byte aligned) of matrix i;
// register i receives matrix i. Plain: lane l holds row l / 4, elements 2 (l % 4), +1.
// stmatrix is the same contract in the other direction (plain layout).
// .trans: lane l holds elements (rows 2 (l % 4), +1) of column l / 4, i.e. the transpose; used
// for V (stored [kv][d]) as the B operand of P V. For x2 / x1 only lanes 0..15 / 0..7 matter.
#pragma once

#include <cstdint>

namespace flashflex::ptx {

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(addr));
}

__device__ __forceinline__ void stmatrix_x4(uint32_t addr, const uint32_t (&r)[4]) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r[0]), "r"(r[1]),
               "r"(r[2]), "r"(r[3])
               : "memory");
}

}  // namespace flashflex::ptx
