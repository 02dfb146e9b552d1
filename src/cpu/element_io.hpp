// Element conversion of the CPU reference: float32 / float16 / bfloat16 to and from double.
// Stores round to nearest even, overflow to inf, keep signed zeros, subnormals and NaN.
// Used by strided_io.hpp and row_scores.hpp to read inputs and write outputs; no _Float16 or
// compiler extension, so the bits are the same with every host compiler.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>

#include "flashflex/error.hpp"
#include "flashflex/tensor.hpp"

namespace flashflex::cpu {

// A 16-bit IEEE-style format: 1 sign bit, then exponent_bits, then mantissa_bits.
struct HalfFormat {
  int exponent_bits;
  int mantissa_bits;
};
inline constexpr HalfFormat kFloat16Format{5, 10};
inline constexpr HalfFormat kBFloat16Format{8, 7};

inline constexpr int kDoubleMantissaBits = 52;
inline constexpr int kDoubleExponentBias = 1023;
inline constexpr uint64_t kDoubleExponentMask = 0x7ff;
inline constexpr int kDoubleSignShift = 63;
inline constexpr uint16_t kHalfSignBit = 0x8000;

inline uint64_t double_bits(double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
}

inline double decode_half(uint16_t bits, HalfFormat f) {
  const int bias = (1 << (f.exponent_bits - 1)) - 1;
  const int max_exponent_field = (1 << f.exponent_bits) - 1;
  const int exponent_field = (bits & ~kHalfSignBit) >> f.mantissa_bits;
  const int mantissa = bits & ((1 << f.mantissa_bits) - 1);
  const double sign = (bits & kHalfSignBit) ? -1.0 : 1.0;
  if (exponent_field == max_exponent_field) {
    return mantissa ? std::numeric_limits<double>::quiet_NaN() : sign * std::numeric_limits<double>::infinity();
  }
  if (exponent_field == 0) return sign * std::ldexp(mantissa, 1 - bias - f.mantissa_bits);  // subnormal
  return sign * std::ldexp(mantissa + (1 << f.mantissa_bits), exponent_field - bias - f.mantissa_bits);
}

// Rounds straight from double (not through float, which would round twice).
inline uint16_t encode_half(double x, HalfFormat f) {
  const uint64_t bits = double_bits(x);
  const uint16_t sign = (bits >> kDoubleSignShift) ? kHalfSignBit : uint16_t{0};
  const uint16_t exponent_all_ones = static_cast<uint16_t>(((1 << f.exponent_bits) - 1) << f.mantissa_bits);
  const uint16_t quiet_nan_bit = static_cast<uint16_t>(1 << (f.mantissa_bits - 1));
  if (std::isnan(x)) return static_cast<uint16_t>(sign | exponent_all_ones | quiet_nan_bit);
  if (std::isinf(x)) return static_cast<uint16_t>(sign | exponent_all_ones);
  const int exponent_field = static_cast<int>((bits >> kDoubleMantissaBits) & kDoubleExponentMask);
  // Double subnormals (|x| < 2^-1022) are far below the smallest half/bfloat16 subnormal.
  if (exponent_field == 0) return sign;
  const uint64_t significand = (bits & ((uint64_t{1} << kDoubleMantissaBits) - 1)) |
                               (uint64_t{1} << kDoubleMantissaBits);  // 53 bits, value * 2^(52 - e)
  const int exponent = exponent_field - kDoubleExponentBias;
  const int bias = (1 << (f.exponent_bits - 1)) - 1;
  const int min_normal_exponent = 1 - bias;
  // Below the normal range the target's quantum stays 2^(min_normal_exponent - mantissa_bits).
  const int shift = kDoubleMantissaBits - f.mantissa_bits +
                    (exponent < min_normal_exponent ? min_normal_exponent - exponent : 0);
  if (shift > kDoubleMantissaBits + 1) return sign;  // below half the smallest subnormal
  uint64_t rounded = significand >> shift;
  const uint64_t remainder = significand & ((uint64_t{1} << shift) - 1);
  const uint64_t half_quantum = uint64_t{1} << (shift - 1);
  if (remainder > half_quantum || (remainder == half_quantum && (rounded & 1))) ++rounded;
  // A subnormal's bits are its rounded significand; rounding up into 1 << mantissa_bits lands
  // exactly on the smallest normal. A normal adds its exponent field; a carry out of the
  // mantissa bumps the exponent, and past the largest exponent that is inf.
  uint64_t magnitude = rounded;
  if (exponent >= min_normal_exponent) {
    const uint64_t implicit_bit = uint64_t{1} << f.mantissa_bits;
    magnitude = (static_cast<uint64_t>(exponent + bias) << f.mantissa_bits) + (rounded - implicit_bit);
  }
  if (magnitude >= exponent_all_ones) return static_cast<uint16_t>(sign | exponent_all_ones);
  return static_cast<uint16_t>(sign | magnitude);
}

// One element at `offset` (in elements) of a tensor of dtype `dtype`.
template <DType kDType>
inline double load_as_double(const void* data, int64_t offset) {
  if constexpr (kDType == DType::kFloat32) {
    return static_cast<const float*>(data)[offset];
  } else {
    const uint16_t bits = static_cast<const uint16_t*>(data)[offset];
    return decode_half(bits, kDType == DType::kFloat16 ? kFloat16Format : kBFloat16Format);
  }
}

template <DType kDType>
inline void store_from_double(void* data, int64_t offset, double x) {
  if constexpr (kDType == DType::kFloat32) {
    static_cast<float*>(data)[offset] = static_cast<float>(x);  // IEEE: round to nearest even
  } else {
    static_cast<uint16_t*>(data)[offset] =
        encode_half(x, kDType == DType::kFloat16 ? kFloat16Format : kBFloat16Format);
  }
}

// Calls fn(std::integral_constant<DType, dtype>{}) so that element loops are compiled per dtype.
template <typename Fn>
inline void with_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32: fn(std::integral_constant<DType, DType::kFloat32>{}); return;
    case DType::kFloat16: fn(std::integral_constant<DType, DType::kFloat16>{}); return;
    case DType::kBFloat16: fn(std::integral_constant<DType, DType::kBFloat16>{}); return;
    case DType::kInt32:
    case DType::kInt64:
      break;  // index tensors are never read as elements here (validation rejects them)
  }
  throw Error(ErrorKind::kInternal, "cpu reference: expected dtype float32, float16 or bfloat16, got " +
                                        std::to_string(static_cast<int>(dtype)));
}

}  // namespace flashflex::cpu
