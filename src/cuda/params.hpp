// Kernel parameters of every architecture, as plain data filled on the host after validation
// (forward.cu, backward.cu, eagle3.cu) and read on the device by value (__grid_constant__):
//   TensorView      a [batch, heads, len, dim] tensor through element strides
//   LseView         a float32 [batch, heads, len] row statistic (lse, its gradient)
//   BlockMaskView   include/flashflex/block_mask.hpp's arrays, both list directions
//   ScoreModParams  the score mod's data and every scale derived from it (common/score_mod.cuh)
//   RowLimit        per-sample valid rows (common/row_limit.hpp); RowLocalKeys: EAGLE3's diagonal keys
//   FwdParams, BwdParams, RowLocalBwdParams
// A size-1 dimension has stride 0 (its index is always 0).
#pragma once

#include <cuda.h>

#include <cstdint>

#include "cuda/common/row_limit.hpp"
#include "flashflex/mods.hpp"
#include "flashflex/tensor.hpp"

namespace flashflex::cuda {

inline constexpr float kLog2e = 1.4426950408889634f;  // log2(e): exp(x) = exp2(x * kLog2e)
inline constexpr double kLog2eDouble = 1.4426950408889634;

struct TensorView {
  void* data = nullptr;
  int64_t stride_b = 0, stride_h = 0, stride_t = 0;
};

struct LseView {
  float* data = nullptr;  // null: absent
  int64_t stride_b = 0, stride_h = 0, stride_t = 0;
};

// present false: every key visible (no lists are read).
struct BlockMaskView {
  bool present = false;
  int batch = 1;  // 1: shared by every sample
  int heads = 1;  // 1: shared by every head
  const int32_t* kv_num_blocks = nullptr;       // [batch, heads, num_q_tiles]
  const int32_t* kv_indices = nullptr;          // [batch, heads, num_q_tiles, num_kv_tiles]
  const int32_t* full_kv_num_blocks = nullptr;
  const int32_t* full_kv_indices = nullptr;
  const int32_t* q_num_blocks = nullptr;        // [batch, heads, num_kv_tiles]
  const int32_t* q_indices = nullptr;           // [batch, heads, num_kv_tiles, num_q_tiles]
  const int32_t* full_q_num_blocks = nullptr;
  const int32_t* full_q_indices = nullptr;
  const int32_t* partial_tile_ids = nullptr;    // [batch, heads, num_q_tiles, num_kv_tiles]
  const uint32_t* bitmaps = nullptr;            // [num_partial, 128, 4]
};

// Device-side description of the score mod; the scales are derived once on the host
// (make_mod_params, launch_common.hpp).
struct ScoreModParams {
  float softcap = 0.f;                  // kSoftcap: c > 0
  float softcap_inv = 0.f;              // 1 / c
  float softcap_scale = 0.f;            // scale / c: tanh input per unit of q.k
  float softcap_log2 = 0.f;             // c * log2(e)
  const float* alibi_slopes = nullptr;  // kAlibi: float32 [Hq]
  int64_t alibi_stride = 1;
  const void* bias = nullptr;           // kBias: [B or 1, Hq or 1, Q_LEN, KV_LEN]
  DType bias_dtype = DType::kFloat32;
  int64_t bias_stride_b = 0;            // 0 for a broadcast (size-1) dimension
  int64_t bias_stride_h = 0;
  int64_t bias_stride_q = 0;
  int64_t bias_stride_kv = 1;
  int q_len = 0;
  int kv_len = 0;
  HookTensor hook_tensors[kMaxHookTensors];  // kLinked: what the linked hook reads
  float* hook_gather_grads[kMaxHookGathers] = {};  // kLinked backward: fp32 gradients per gather, or null
};

// Most row-local blocks one launch takes (TTT step k <= 15): the pointer tables travel in the
// kernel parameters, which keeps a call free of host-to-device copies (CUDA-graph friendly).
inline constexpr int kMaxRowLocalBlocks = 15;

// EAGLE3 (include/flashflex/eagle3.hpp): at TTT step k the blocks K_1..K_k, V_1..V_k give row q exactly
// one key each, K_j[q] with value V_j[q], each [B, Hkv, T, D] through strides. Rows at or past
// the sample's valid length give nothing at all.
struct RowLocalKeys {
  int count = 0;
  TensorView k[kMaxRowLocalBlocks];
  TensorView v[kMaxRowLocalBlocks];
  RowLimit limit;
};

struct FwdParams {
  TensorView q;    // [B, Hq, Q_LEN, D]
  TensorView k;    // [B, Hkv, KV_LEN, D]
  TensorView v;    // [B, Hkv, KV_LEN, D]
  TensorView out;  // [B, Hq, Q_LEN, D], q's dtype
  LseView lse;     // natural log, or absent (not requested)

  int batch = 0;
  int q_heads = 0;
  int kv_group = 1;  // Hq / Hkv: query head h reads key/value head h / kv_group
  int q_len = 0;
  int kv_len = 0;
  int num_q_tiles = 0;
  int num_kv_tiles = 0;
  float scale = 0.f;  // scores are scale * q.k

  BlockMaskView mask;
  ScoreModParams mod;
  // Read only by the row-local (EAGLE3) kernels.
  RowLocalKeys row_local;
  // The sm90 kernels' dynamic tile order: a word of the caller's workspace, zeroed on the stream
  // by the launcher. Null: the static order (no workspace given).
  unsigned* tile_counter = nullptr;
};

struct BwdParams {
  // Shapes.
  int batch = 0, q_heads = 0, kv_heads = 0, group = 0;
  int q_len = 0, kv_len = 0, head_dim = 0;
  int q_len_pad = 0;   // q_len rounded up to 128: rows of the workspace arrays
  int kv_len_pad = 0;  // kv_len rounded up to 128
  // GQA: a CTA walks heads_per_cta query heads of its kv head's group (splits = group /
  // heads_per_cta CTAs per kv tile and kv head). With splits > 1 each CTA writes fp32 dK * scale
  // and dV into dkv_partial and the dK / dV reduction pass (bwd/convert.cuh) sums the splits in order.
  int heads_per_cta = 1, splits = 1;
  int num_q_tiles = 0, num_kv_tiles = 0;

  // Inputs (dtype T of the instantiation) and outputs.
  TensorView q, k, v, out, dout, dq, dk, dv;
  LseView lse;   // [B, Hq, Q_LEN]
  LseView dlse;  // optional, same shape

  float scale = 0.f;       // softmax scale (the score mod sees scale * q.k)
  float scale_log2 = 0.f;  // scale * log2(e)
  ScoreModParams mod;      // the kind is a template parameter of the kernels

  // dbias (bias mod only): fp32 accumulator [Bb, Hb, Q_LEN, KV_LEN] contiguous (Bb, Hb: the bias's
  // batch and heads, 1 when broadcast), converted into `dbias` (the bias's dtype and strides) by
  // the dbias conversion pass. Null: no dbias requested.
  float* dbias_accum = nullptr;
  int bias_batch = 1, bias_heads = 1;
  DType dbias_dtype = DType::kFloat32;
  TensorView dbias;

  BlockMaskView mask;
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

  // The dQ writer (bwd/dq_writer.cuh): dq_bulk, dQ tiles added into dq_accum by the copy engine
  // through dq_map (the 2-d fp32 view [B * Hq * q_len_pad, head_dim] of it), else by red.add.
  bool dq_bulk = false;
  CUtensorMap dq_map;
  int block_n = 128;                // keys per CTA of the main kernel
  int32_t* dq_semaphore = nullptr;  // [B, Hq, num_q_tiles], zeroed
  int32_t* dq_rank = nullptr;       // mask only: [mask batch, mask heads, num_kv_tiles, num_q_tiles],
                                    // CTAs of the kv tiles above n that add into q tile m
};

// The backward's row-local pass (bwd/row_local.cuh) over the rows of RowLocalKeys: reads the row
// statistics of the block-sparse backward (bwd/preprocess.cuh) and adds into its fp32 dQ
// accumulator; writes dK_j, dV_j.
struct RowLocalBwdParams {
  int batch = 0, q_heads = 0, kv_heads = 0, group = 1;
  int q_len = 0, q_len_pad = 0;
  TensorView q, dout;
  const float* lse2 = nullptr;   // [B, Hq, q_len_pad]: LSE * log2(e), +inf on rows that saw nothing
  const float* dpsum = nullptr;  // [B, Hq, q_len_pad]: rowsum(dO * O) - dlse
  float* dq_accum = nullptr;     // [B, Hq, q_len_pad, D] fp32, unscaled (the conversion scales)
  float scale_log2 = 0.f;        // scale * log2(e)
  float scale = 0.f;
  RowLocalKeys keys;
  TensorView dk[kMaxRowLocalBlocks];
  TensorView dv[kMaxRowLocalBlocks];
};

}  // namespace flashflex::cuda
