// Score modifications: applied to every visible score s = scale * q.k before masking (torch
// flex semantics), with their derivatives in the backward. A small closed set, compiled ahead
// of time: the kernels take the kind as a template parameter.
#pragma once

#include "flashflex/tensor.hpp"

namespace flashflex {

enum class ScoreModKind : int {
  kNone = 0,
  kSoftcap = 1,  // s -> c * tanh(s / c);             ds/ds' = 1 - tanh^2(s / c)
  kAlibi = 2,    // s -> s + slope[h] * (kv - q);      ds/ds' = 1
  kBias = 3,     // s -> s + bias[b, h, q, kv];        ds/ds' = 1, d/dbias = dS
};

struct ScoreMod {
  ScoreModKind kind = ScoreModKind::kNone;
  double softcap = 0.0;     // kSoftcap: c > 0
  TensorRef alibi_slopes;   // kAlibi: float32 [Hq], one slope per query head
  TensorRef bias;           // kBias: [B or 1, Hq or 1, Q_LEN, KV_LEN], any float dtype

  static ScoreMod none() { return {}; }
  static ScoreMod soft_cap(double cap) {
    ScoreMod m;
    m.kind = ScoreModKind::kSoftcap;
    m.softcap = cap;
    return m;
  }
  static ScoreMod alibi(TensorRef slopes) {
    ScoreMod m;
    m.kind = ScoreModKind::kAlibi;
    m.alibi_slopes = slopes;
    return m;
  }
  static ScoreMod additive_bias(TensorRef bias) {
    ScoreMod m;
    m.kind = ScoreModKind::kBias;
    m.bias = bias;
    return m;
  }
};

const char* score_mod_name(ScoreModKind kind);

}  // namespace flashflex
