// Strided tensor I/O of the CPU reference: copies one (batch, head) matrix, or one row of it, of a
// TensorRef into a contiguous float64 buffer and back, and the same for float32 row statistics
// (lse, dlse). The references (reference_forward.cpp, reference_backward.cpp,
// reference_eagle3.cpp) gather once per group or row and run their loops on these buffers;
// element conversion is in element_io.hpp.
#pragma once

#include <cstdint>

#include "cpu/element_io.hpp"
#include "flashflex/tensor.hpp"

namespace flashflex::cpu {

// Element offset of index (i0, i1, i2, i3) of a rank-4 tensor.
inline int64_t offset_of(const TensorRef& t, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
  return i0 * t.strides[0] + i1 * t.strides[1] + i2 * t.strides[2] + i3 * t.strides[3];
}

// dst[r * cols + c] = t[b, h, r, c] for the (rows, cols) = (sizes[2], sizes[3]) matrix.
inline void gather_matrix(const TensorRef& t, int64_t b, int64_t h, double* dst) {
  const int64_t rows = t.sizes[2], cols = t.sizes[3];
  with_dtype(t.dtype, [&](auto dtype) {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t row_offset = offset_of(t, b, h, r, 0);
      for (int64_t c = 0; c < cols; ++c) {
        dst[r * cols + c] = load_as_double<decltype(dtype)::value>(t.data, row_offset + c * t.strides[3]);
      }
    }
  });
}

// dst[c * rows + r] = t[b, h, r, c]: columns contiguous, so dot products over c become
// vectorisable updates over r.
inline void gather_matrix_transposed(const TensorRef& t, int64_t b, int64_t h, double* dst) {
  const int64_t rows = t.sizes[2], cols = t.sizes[3];
  with_dtype(t.dtype, [&](auto dtype) {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t row_offset = offset_of(t, b, h, r, 0);
      for (int64_t c = 0; c < cols; ++c) {
        dst[c * rows + r] = load_as_double<decltype(dtype)::value>(t.data, row_offset + c * t.strides[3]);
      }
    }
  });
}

// t[b, h, r, c] = src[r * cols + c], rounded to t's dtype.
inline void scatter_matrix(const double* src, const TensorRef& t, int64_t b, int64_t h) {
  const int64_t rows = t.sizes[2], cols = t.sizes[3];
  with_dtype(t.dtype, [&](auto dtype) {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t row_offset = offset_of(t, b, h, r, 0);
      for (int64_t c = 0; c < cols; ++c) {
        store_from_double<decltype(dtype)::value>(t.data, row_offset + c * t.strides[3], src[r * cols + c]);
      }
    }
  });
}

// dst[c] = t[b, h, r, c] for the sizes[3] elements of one row.
inline void gather_row(const TensorRef& t, int64_t b, int64_t h, int64_t r, double* dst) {
  const int64_t row_offset = offset_of(t, b, h, r, 0);
  with_dtype(t.dtype, [&](auto dtype) {
    for (int64_t c = 0; c < t.sizes[3]; ++c) {
      dst[c] = load_as_double<decltype(dtype)::value>(t.data, row_offset + c * t.strides[3]);
    }
  });
}

// t[b, h, r, c] = src[c], rounded to t's dtype.
inline void scatter_row(const double* src, const TensorRef& t, int64_t b, int64_t h, int64_t r) {
  const int64_t row_offset = offset_of(t, b, h, r, 0);
  with_dtype(t.dtype, [&](auto dtype) {
    for (int64_t c = 0; c < t.sizes[3]; ++c) {
      store_from_double<decltype(dtype)::value>(t.data, row_offset + c * t.strides[3], src[c]);
    }
  });
}

// Row statistics are float32 [B, H, T] (validated in src/api/validate.cpp).
inline double row_stat_at(const TensorRef& t, int64_t b, int64_t h, int64_t i) {
  return static_cast<const float*>(t.data)[b * t.strides[0] + h * t.strides[1] + i * t.strides[2]];
}

inline void set_row_stat(const TensorRef& t, int64_t b, int64_t h, int64_t i, double x) {
  static_cast<float*>(t.data)[b * t.strides[0] + h * t.strides[1] + i * t.strides[2]] = static_cast<float>(x);
}

inline void gather_row_stat(const TensorRef& t, int64_t b, int64_t h, double* dst) {
  const float* data = static_cast<const float*>(t.data);
  for (int64_t i = 0; i < t.sizes[2]; ++i) dst[i] = data[b * t.strides[0] + h * t.strides[1] + i * t.strides[2]];
}

inline void scatter_row_stat(const double* src, const TensorRef& t, int64_t b, int64_t h) {
  float* data = static_cast<float*>(t.data);
  for (int64_t i = 0; i < t.sizes[2]; ++i) {
    data[b * t.strides[0] + h * t.strides[1] + i * t.strides[2]] = static_cast<float>(src[i]);
  }
}

}  // namespace flashflex::cpu
