// FwdParams: everything the sm80 forward kernel reads, as plain data (pointers, int64 element
// strides, lengths, the block-mask arrays, the score mod). Filled on the host by
// src/cuda/forward.cu after validation; read on the device by kernel_fwd.cuh.
#pragma once

#include <cstdint>

#include "cuda/score_mod.cuh"
#include "cuda/sm80/row_local.hpp"

namespace flashflex::sm80 {

struct FwdParams {
  const void* q = nullptr;  // [B, Hq, Q_LEN, D]
  const void* k = nullptr;  // [B, Hkv, KV_LEN, D]
  const void* v = nullptr;  // [B, Hkv, KV_LEN, D]
  void* out = nullptr;      // [B, Hq, Q_LEN, D], q's dtype
  float* lse = nullptr;     // [B, Hq, Q_LEN] natural log, or null (not requested)

  // Element strides; a size-1 dimension has stride 0 (its index is always 0).
  int64_t q_stride_b = 0, q_stride_h = 0, q_stride_t = 0;
  int64_t k_stride_b = 0, k_stride_h = 0, k_stride_t = 0;
  int64_t v_stride_b = 0, v_stride_h = 0, v_stride_t = 0;
  int64_t out_stride_b = 0, out_stride_h = 0, out_stride_t = 0;
  int64_t lse_stride_b = 0, lse_stride_h = 0, lse_stride_t = 0;

  int batch = 0;
  int q_heads = 0;
  int kv_group = 1;  // Hq / Hkv: query head h reads key/value head h / kv_group
  int q_len = 0;
  int kv_len = 0;
  int num_q_tiles = 0;
  int num_kv_tiles = 0;
  float scale = 0.f;  // scores are scale * q.k

  // Block mask (include/flashflex/block_mask.hpp); has_mask false: every kv tile is full.
  bool has_mask = false;
  int mask_batch = 1;  // 1: shared by every sample
  int mask_heads = 1;  // 1: shared by every head
  const int32_t* kv_num_blocks = nullptr;
  const int32_t* kv_indices = nullptr;
  const int32_t* full_kv_num_blocks = nullptr;
  const int32_t* full_kv_indices = nullptr;
  const int32_t* partial_tile_ids = nullptr;
  const uint32_t* bitmaps = nullptr;

  cuda::ScoreModParams mod;

  // EAGLE3 row-local keys and valid rows; read only by the kRowLocal kernels (row_local_fwd.cuh).
  RowLocalKeys row_local;
};

}  // namespace flashflex::sm80
