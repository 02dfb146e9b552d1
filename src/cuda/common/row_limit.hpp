// RowLimit: a per-sample bound on the query rows that see anything (the EAGLE3 rows past
// L_b - k, RowLocalKeys in cuda/params.hpp). The forward skips q blocks at or past it and empties
// the rows; the backward's q walk (common/q_walk.cuh) skips q tiles at or past it. Plain data,
// host and device.
#pragma once

#include <cstdint>

#include "mask/bitmap.hpp"  // FLASHFLEX_HOST_DEVICE

namespace flashflex::cuda {

// Valid rows of sample b: clamp((lengths ? lengths[b] : q_len) - shift, 0, q_len).
struct RowLimit {
  const void* lengths = nullptr;  // int32 or int64 [batch] on the device, or null
  int64_t lengths_stride = 1;     // elements
  bool lengths_int64 = false;
  int shift = 0;  // the TTT step k (rows L_b - k .. T - 1 see nothing)

  FLASHFLEX_HOST_DEVICE int valid_rows(int b, int q_len) const {
    int64_t n = q_len;
    if (lengths != nullptr) {
      const int64_t at = b * lengths_stride;
      n = lengths_int64 ? static_cast<const int64_t*>(lengths)[at] : static_cast<const int32_t*>(lengths)[at];
    }
    n -= shift;
    return static_cast<int>(n < 0 ? 0 : (n > q_len ? q_len : n));
  }
};

}  // namespace flashflex::cuda
