// Kernel parameters of the EAGLE3 row-local keys (DESIGN.md decision 5). At TTT step k the
// blocks K_1..K_k, V_1..V_k give row q of the query exactly one key each, K_j[q] with value
// V_j[q]: the forward folds them into its online softmax after the block-sparse kv loop over
// block 0 (row_local_fwd.cuh), the backward adds them in a row-local pass after the block-sparse
// kernel (row_local_bwd.cuh). Rows at or past the sample's valid length give nothing at all.
// Plain data, filled on the host by src/cuda/eagle3.cu.
#pragma once

#include <cstdint>

#include "cuda/sm80/params_bwd.hpp"
#include "cuda/sm80/row_limit.hpp"

namespace flashflex::sm80 {

// Most row-local blocks one launch takes (TTT step k <= 15): the pointer tables travel in the
// kernel parameters, which keeps a call free of host-to-device copies (CUDA-graph friendly).
inline constexpr int kMaxRowLocalBlocks = 15;

// Forward: K_1..K_count and V_1..V_count, each [B, Hkv, T, D] through strides.
struct RowLocalKeys {
  int count = 0;
  BwdTensor k[kMaxRowLocalBlocks];
  BwdTensor v[kMaxRowLocalBlocks];
  RowLimit limit;
};

// Backward pass over the same rows: reads the row statistics of the block-sparse backward
// (preprocess_bwd.cuh) and adds into its fp32 dQ accumulator; writes dK_j, dV_j.
struct RowLocalBwdParams {
  int batch = 0, q_heads = 0, kv_heads = 0, group = 1;
  int q_len = 0, q_len_pad = 0;
  BwdTensor q, dout;
  const float* lse2 = nullptr;   // [B, Hq, q_len_pad]: LSE * log2(e), +inf on rows that saw nothing
  const float* dpsum = nullptr;  // [B, Hq, q_len_pad]: rowsum(dO * O) - dlse
  float* dq_accum = nullptr;     // [B, Hq, q_len_pad, D] fp32, unscaled (the conversion scales)
  float scale_log2 = 0.f;        // scale * log2(e)
  float scale = 0.f;
  RowLocalKeys keys;
  BwdTensor dk[kMaxRowLocalBlocks];
  BwdTensor dv[kMaxRowLocalBlocks];
};

}  // namespace flashflex::sm80
