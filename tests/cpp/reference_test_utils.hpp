// Helpers of test_reference.cpp: host tensors of any dtype and layout behind a TensorRef, an
// element decoder written independently of src/cpu/element_io.hpp, HostBlockMasks built by
// brute force from a dense visibility array, and rounding-aware comparison. The dense float64
// oracle itself is in reference_test_dense.hpp.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cpu/element_io.hpp"
#include "flashflex/attention.hpp"
#include "mask/bitmap.hpp"

namespace flashflex::reference_test {

inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
inline constexpr double kInf = std::numeric_limits<double>::infinity();

// ---- elements --------------------------------------------------------------------------------

// Decoders written from the format definitions, independent of the library's converters.
inline double decode_float16_for_test(uint16_t bits) {
  constexpr int kMantissaBits = 10, kExponentBias = 15, kExponentAllOnes = 31;
  const int exponent = (bits >> kMantissaBits) & kExponentAllOnes;
  const int mantissa = bits & ((1 << kMantissaBits) - 1);
  const double sign = (bits >> 15) ? -1.0 : 1.0;
  if (exponent == kExponentAllOnes) return mantissa ? kNaN : sign * kInf;
  if (exponent == 0) return sign * std::ldexp(mantissa, 1 - kExponentBias - kMantissaBits);
  return sign * std::ldexp(1.0 + std::ldexp(mantissa, -kMantissaBits), exponent - kExponentBias);
}

// bfloat16 is the upper half of a float32.
inline double decode_bfloat16_for_test(uint16_t bits) {
  const uint32_t widened = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &widened, sizeof f);
  return f;
}

// Unit roundoff of a dtype: a value rounded to nearest is within u * |x| (normal range).
inline double unit_roundoff(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return std::ldexp(1.0, -24);
    case DType::kFloat16: return std::ldexp(1.0, -11);
    case DType::kBFloat16: return std::ldexp(1.0, -8);
  }
  return kNaN;
}

// Half the smallest subnormal: the absolute rounding error below the normal range.
inline double subnormal_rounding(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return std::ldexp(1.0, -150);
    case DType::kFloat16: return std::ldexp(1.0, -25);
    case DType::kBFloat16: return std::ldexp(1.0, -134);
  }
  return kNaN;
}

// ---- tensors ---------------------------------------------------------------------------------

// Memory order of a rank-4 [B, H, T, D] tensor: flex's [B, H, T, D] or FlashAttention's
// [B, T, H, D], seen through strides.
enum class Layout { kHeadsOuter, kSeqOuter };

// An owning host tensor. Values are addressed by their logical row-major index over `sizes`.
class TestTensor {
 public:
  TestTensor() = default;
  TestTensor(DType dtype, std::vector<int64_t> sizes, Layout layout = Layout::kHeadsOuter) : sizes_(sizes) {
    int64_t numel = 1;
    for (int64_t s : sizes) numel *= s;
    bytes_.assign(static_cast<size_t>(numel) * dtype_size(dtype), 0);
    logical_strides_.assign(sizes.size(), 1);
    for (int d = static_cast<int>(sizes.size()) - 2; d >= 0; --d) {
      logical_strides_[d] = logical_strides_[d + 1] * sizes[d + 1];
    }
    std::vector<int64_t> strides = logical_strides_;
    if (layout == Layout::kSeqOuter && sizes.size() == 4) {
      const int64_t h = sizes[1], t = sizes[2], d = sizes[3];
      strides = {t * h * d, d, h * d, 1};
    }
    ref_.dtype = dtype;
    ref_.rank = static_cast<int>(sizes.size());
    for (size_t i = 0; i < sizes.size(); ++i) {
      ref_.sizes[i] = sizes[i];
      ref_.strides[i] = strides[i];
    }
  }

  // Built on each call, so a moved or copied tensor never hands out a stale pointer.
  TensorRef ref() const {
    TensorRef r = ref_;
    r.data = const_cast<unsigned char*>(bytes_.data());
    return r;
  }
  DType dtype() const { return ref_.dtype; }
  const std::vector<int64_t>& sizes() const { return sizes_; }
  int64_t numel() const { return static_cast<int64_t>(bytes_.size() / dtype_size(ref_.dtype)); }

  double at(int64_t index) const {
    const int64_t offset = storage_offset(index);
    if (ref_.dtype == DType::kFloat32) {
      float f;
      std::memcpy(&f, bytes_.data() + offset * 4, sizeof f);
      return f;
    }
    uint16_t bits;
    std::memcpy(&bits, bytes_.data() + offset * 2, sizeof bits);
    return ref_.dtype == DType::kFloat16 ? decode_float16_for_test(bits) : decode_bfloat16_for_test(bits);
  }

  // Stores x rounded to the dtype (inputs only: any representable value serves a test).
  void set(int64_t index, double x) {
    const int64_t offset = storage_offset(index);
    if (ref_.dtype == DType::kFloat32) {
      const float f = static_cast<float>(x);
      std::memcpy(bytes_.data() + offset * 4, &f, sizeof f);
      return;
    }
    const cpu::HalfFormat format = ref_.dtype == DType::kFloat16 ? cpu::kFloat16Format : cpu::kBFloat16Format;
    const uint16_t bits = cpu::encode_half(x, format);
    std::memcpy(bytes_.data() + offset * 2, &bits, sizeof bits);
  }

  std::vector<double> values() const {
    std::vector<double> v(static_cast<size_t>(numel()));
    for (int64_t i = 0; i < numel(); ++i) v[i] = at(i);
    return v;
  }

  void fill_normal(std::mt19937& rng, double stddev) {
    std::normal_distribution<double> normal(0.0, stddev);
    for (int64_t i = 0; i < numel(); ++i) set(i, normal(rng));
  }

  // NaN everywhere, so an element the library fails to write shows up in every comparison.
  void poison() {
    for (int64_t i = 0; i < numel(); ++i) set(i, kNaN);
  }

 private:
  int64_t storage_offset(int64_t index) const {
    int64_t offset = 0;
    for (size_t d = 0; d < sizes_.size(); ++d) {
      offset += (index / logical_strides_[d]) % sizes_[d] * ref_.strides[d];
    }
    return offset;
  }

  std::vector<int64_t> sizes_;
  std::vector<int64_t> logical_strides_;
  std::vector<unsigned char> bytes_;
  TensorRef ref_;  // sizes, strides and dtype; data is filled in by ref()
};

// ---- block masks -----------------------------------------------------------------------------

// Visibility of every (q, kv) pair for mask_batch x mask_heads (1 = broadcast), row-major
// [mask_batch, mask_heads, q_len, kv_len].
struct DenseMask {
  int64_t batch = 1, heads = 1, q_len = 0, kv_len = 0;
  std::vector<uint8_t> visible;

  bool operator()(int64_t b, int64_t h, int64_t q, int64_t kv) const {
    const int64_t bh = (batch == 1 ? 0 : b) * heads + (heads == 1 ? 0 : h);
    return visible[static_cast<size_t>((bh * q_len + q) * kv_len + kv)] != 0;
  }
};

// The BlockMask of a dense mask, by brute force over every tile: a tile is full when it lies
// inside (q_len, kv_len) and every element is visible, partial when some element is visible.
// With `full_as_partial` full tiles are listed as partial tiles whose bitmaps are all ones.
inline HostBlockMask block_mask_from_dense(const DenseMask& dense, bool full_as_partial = false) {
  HostBlockMask m;
  m.batch = dense.batch;
  m.heads = dense.heads;
  m.q_len = dense.q_len;
  m.kv_len = dense.kv_len;
  m.num_q_tiles = num_tiles(dense.q_len);
  m.num_kv_tiles = num_tiles(dense.kv_len);
  const int64_t bh_count = m.batch * m.heads, mt = m.num_q_tiles, nt = m.num_kv_tiles;
  m.kv_num_blocks.assign(bh_count * mt, 0);
  m.full_kv_num_blocks.assign(bh_count * mt, 0);
  m.kv_indices.assign(bh_count * mt * nt, 0);
  m.full_kv_indices.assign(bh_count * mt * nt, 0);
  m.q_num_blocks.assign(bh_count * nt, 0);
  m.full_q_num_blocks.assign(bh_count * nt, 0);
  m.q_indices.assign(bh_count * nt * mt, 0);
  m.full_q_indices.assign(bh_count * nt * mt, 0);
  m.partial_tile_ids.assign(bh_count * mt * nt, -1);
  for (int64_t bh = 0; bh < bh_count; ++bh) {
    const int64_t b = bh / m.heads, h = bh % m.heads;
    for (int64_t qt = 0; qt < mt; ++qt) {
      for (int64_t kt = 0; kt < nt; ++kt) {
        std::vector<uint32_t> bitmap(kBitmapWords, 0);
        int64_t count = 0;
        for (int64_t r = 0; r < kTileSize && qt * kTileSize + r < dense.q_len; ++r) {
          for (int64_t c = 0; c < kTileSize && kt * kTileSize + c < dense.kv_len; ++c) {
            if (dense(b, h, qt * kTileSize + r, kt * kTileSize + c)) {
              detail::bitmap_set(bitmap.data(), static_cast<int>(r), static_cast<int>(c));
              ++count;
            }
          }
        }
        if (count == 0) continue;
        const bool full = count == kTileSize * kTileSize && !full_as_partial;
        const int64_t kv_row = bh * mt + qt, q_row = bh * nt + kt;
        if (full) {
          m.full_kv_indices[kv_row * nt + m.full_kv_num_blocks[kv_row]++] = static_cast<int32_t>(kt);
          m.full_q_indices[q_row * mt + m.full_q_num_blocks[q_row]++] = static_cast<int32_t>(qt);
        } else {
          m.partial_tile_ids[kv_row * nt + kt] = static_cast<int32_t>(m.num_partial_tiles());
          m.bitmaps.insert(m.bitmaps.end(), bitmap.begin(), bitmap.end());
          m.kv_indices[kv_row * nt + m.kv_num_blocks[kv_row]++] = static_cast<int32_t>(kt);
          m.q_indices[q_row * mt + m.q_num_blocks[q_row]++] = static_cast<int32_t>(qt);
        }
      }
    }
  }
  return m;
}

// ---- comparison ------------------------------------------------------------------------------

// Library and oracle both sum in float64, in different orders: they differ by a few units of
// 2^-53 times the sum of |terms| (at most ~10^3 terms of size <= ~10^2 here), far below this
// fraction of the largest reference value.
inline constexpr double kFloat64OrderSlack = 1e-10;

// Every element of `got` is `want` rounded once to `dtype`:
//   |got - want| <= u * |want| + subnormal rounding + kFloat64OrderSlack * max |want|;
// infinities must match exactly and NaN never passes.
inline ::testing::AssertionResult rounded_from(const char* name, const std::vector<double>& got,
                                               const std::vector<double>& want, DType dtype) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << name << ": size " << got.size() << " vs " << want.size();
  }
  double max_want = 0.0;
  for (double w : want) {
    if (std::isfinite(w)) max_want = std::max(max_want, std::abs(w));
  }
  const double slack = kFloat64OrderSlack * max_want + subnormal_rounding(dtype);
  double worst = 0.0;
  size_t worst_index = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    double ratio;
    if (std::isinf(want[i])) {
      ratio = got[i] == want[i] ? 0.0 : kInf;
    } else {
      const double bound = unit_roundoff(dtype) * std::abs(want[i]) + slack;
      const double err = std::abs(got[i] - want[i]);
      ratio = std::isnan(err) ? kInf : err / bound;
    }
    if (ratio > worst) {
      worst = ratio;
      worst_index = i;
    }
  }
  if (worst <= 1.0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << name << ": element " << worst_index << " is " << got[worst_index]
                                       << ", expected " << want[worst_index] << " rounded to "
                                       << dtype_name(dtype) << " (error " << worst << "x the bound)";
}

}  // namespace flashflex::reference_test
