// Thin PTX wrappers over the special-function unit used by the softmax: fast exp2 (sm_75+).
#pragma once

namespace flashflex::ptx {

// Base-2 exponential through MUFU.EX2 (about 2 ulp; exp2(-inf) = +0; denormal results flush to 0).
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace flashflex::ptx
