// BwdParams: everything the sm80 backward kernels read, as plain pointers, sizes and element
// strides (src/cuda/backward.cu fills it on the host, the kernels in preprocess_bwd.cuh,
// mainloop_bwd.cuh, convert_dq_bwd.cuh read it by value). A size-1 dimension has stride 0.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "cuda/score_mod.cuh"
#include "cuda/sm80/row_limit.hpp"

namespace flashflex::sm80 {

// A 4-d strided view [batch, heads, len, dim] (element strides; innermost stride 1).
struct BwdTensor {
  void* data = nullptr;
  int64_t stride_b = 0, stride_h = 0, stride_t = 0;
};

// BlockMask view (include/flashflex/block_mask.hpp); `present` false: every key visible.
struct BwdMask {
  bool present = false;
  int batch = 1, heads = 1;
  const int32_t* q_num_blocks = nullptr;       // [batch, heads, num_kv_tiles]
  const int32_t* q_indices = nullptr;          // [batch, heads, num_kv_tiles, num_q_tiles]
  const int32_t* full_q_num_blocks = nullptr;
  const int32_t* full_q_indices = nullptr;
  const int32_t* partial_tile_ids = nullptr;   // [batch, heads, num_q_tiles, num_kv_tiles]
  const uint32_t* bitmaps = nullptr;           // [num_partial, 128, 4]
};

struct BwdParams {
  // Shapes.
  int batch = 0, q_heads = 0, kv_heads = 0, group = 0;
  int q_len = 0, kv_len = 0, head_dim = 0;
  int q_len_pad = 0;   // q_len rounded up to 128: rows of the workspace arrays
  int kv_len_pad = 0;  // kv_len rounded up to 128
  // GQA: a CTA walks heads_per_cta query heads of its kv head's group (splits = group /
  // heads_per_cta CTAs per kv tile and kv head). With splits > 1 each CTA writes fp32 dK * scale
  // and dV into dkv_partial and bwd_reduce_dkv_kernel sums the splits in order.
  int heads_per_cta = 1, splits = 1;
  int num_q_tiles = 0, num_kv_tiles = 0;

  // Inputs (dtype T of the instantiation) and outputs.
  BwdTensor q, k, v, out, dout, dq, dk, dv;
  const float* lse = nullptr;   // [B, Hq, Q_LEN] strides below
  int64_t lse_stride_b = 0, lse_stride_h = 0, lse_stride_t = 0;
  const float* dlse = nullptr;  // optional, same shape
  int64_t dlse_stride_b = 0, dlse_stride_h = 0, dlse_stride_t = 0;

  float scale = 0.f;       // softmax scale (the score mod sees scale * q.k)
  float scale_log2 = 0.f;  // scale * log2(e)

  // Score mod (src/cuda/score_mod.cuh; the kind is a template parameter of the kernels).
  cuda::ScoreModParams mod;
  float softcap_scale = 0.f;  // softcap: scale / cap (tanh input per unit of q.k)
  float softcap_log2 = 0.f;   // softcap: cap * log2(e)

  // dbias (bias mod only): fp32 accumulator [Bb, Hb, Q_LEN, KV_LEN] contiguous (Bb, Hb: the bias's
  // batch and heads, 1 when broadcast), converted into `dbias` (the bias's dtype and strides) by
  // bwd_convert_dbias_kernel. Null: no dbias requested.
  float* dbias_accum = nullptr;
  int bias_batch = 1, bias_heads = 1;
  DType dbias_dtype = DType::kFloat32;
  BwdTensor dbias;

  BwdMask mask;
  // Rows of sample b at or past rows.valid_rows(b, q_len) see nothing (their LSE is -inf): the q
  // walk skips the q tiles that start there (EAGLE3's padded samples; default: no limit).
  RowLimit rows;

  // Workspace.
  float* dq_accum = nullptr;  // [B, Hq, q_len_pad, D] fp32, zeroed before the main kernel
  float* lse2 = nullptr;      // [B, Hq, q_len_pad]: LSE * log2(e); +inf where LSE = -inf, 0 on padding
  float* dpsum = nullptr;     // [B, Hq, q_len_pad]: rowsum(dO * O) - dlse, 0 on padding
  float* dkv_partial = nullptr;  // splits > 1: [B, Hkv, splits, 2 (dK, dV), kv_len_pad, D] fp32

  // Deterministic mode: the CTAs that add into a (b, hq, q tile) of dQ do so one after the other,
  // in descending kv order (the grid then runs kv blocks in reverse, so that every CTA waited for
  // was started earlier), through one semaphore per (b, hq, q tile) counting the CTAs done.
  bool deterministic = false;

  // sm_90 and newer, not deterministic (launch_bwd.cuh): dQ tiles are added into dq_accum by the
  // copy engine through dq_map, the 2-d fp32 view [B * Hq * q_len_pad, head_dim] of it.
  bool dq_bulk = false;
  CUtensorMap dq_map;
  int block_n = 128;                // keys per CTA (kernel_traits_bwd.cuh)
  int32_t* dq_semaphore = nullptr;  // [B, Hq, num_q_tiles], zeroed
  int32_t* dq_rank = nullptr;       // mask only: [mask batch, mask heads, num_kv_tiles, num_q_tiles],
                                    // CTAs of the kv tiles above n that add into q tile m
};

}  // namespace flashflex::sm80
