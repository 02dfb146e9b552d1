// A value the compiler cannot see through: opaque(x) == x, produced by a volatile move inside the
// loop that calls it. Addresses derived from it by constant offsets are then computed where they
// are used instead of being hoisted out of the loop, each into a register of its own that the
// loop keeps live (and, at 240 registers, spills).
#pragma once

#include <cstdint>

namespace flashflex::ptx {

__device__ __forceinline__ uint32_t opaque(uint32_t x) {
  uint32_t y;
  asm volatile("mov.b32 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

}  // namespace flashflex::ptx
