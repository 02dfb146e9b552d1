// Mask: a mask predicate (built-in or user-defined, combined with & and |) and the CPU builder
// that turns it into a BlockMask. Built-in masks classify tiles analytically and evaluate
// their predicate only inside partial tiles: no dense Q_LEN x KV_LEN evaluation.
// A user predicate has no analytic classification: it is evaluated in every tile that the
// built-in masks it is combined with do not rule out.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "flashflex/block_mask.hpp"

namespace flashflex {

namespace detail {
struct MaskNode;
}

// Row q of sample b, head h sees column kv iff the predicate holds.
class Mask {
 public:
  using Predicate = std::function<bool(int64_t b, int64_t h, int64_t q, int64_t kv)>;

  // kv <= q + offset. Use offset = KV_LEN - Q_LEN for bottom-right alignment.
  static Mask causal(int64_t offset = 0);
  // q + offset - left <= kv <= q + offset + right (left, right >= 0).
  static Mask sliding_window(int64_t left, int64_t right, int64_t offset = 0);
  // q_doc_ids[b][q] == kv_doc_ids[b][kv]; arrays are [batch, Q_LEN] and [batch, KV_LEN],
  // row-major. Empty kv_doc_ids means "the same as q_doc_ids" (self-attention).
  static Mask document(std::vector<int32_t> q_doc_ids, std::vector<int32_t> kv_doc_ids, int64_t batch);
  // Prefix-LM: kv < prefix_lengths[b] or kv <= q (bidirectional prefix, causal rest).
  static Mask prefix_lm(std::vector<int64_t> prefix_lengths);
  // q < q_lengths[b] and kv < kv_lengths[b]; an empty vector puts no limit on that side.
  static Mask padding(std::vector<int64_t> q_lengths, std::vector<int64_t> kv_lengths);
  // EAGLE3 test-time training, step `step` (keys are step + 1 blocks of block_len columns):
  // row q of sample b sees column c iff q < L_b - step and either c < block_len and c <= q,
  // or c = j * block_len + q for some 1 <= j <= step. Empty lengths: L_b = block_len; each
  // length is in [0, block_len].
  static Mask eagle3(int64_t step, int64_t block_len, std::vector<int64_t> lengths = {});
  // Any predicate; it is called only for in-range (q, kv), with every sample and head.
  static Mask predicate(Predicate fn);

  friend Mask operator&(const Mask& a, const Mask& b);
  friend Mask operator|(const Mask& a, const Mask& b);

  bool operator()(int64_t b, int64_t h, int64_t q, int64_t kv) const;
  // Number of samples the mask's data describe, or 0 if it is the same for every sample.
  int64_t batch() const;
  // Whether the mask can differ between samples (per-sample data or a user predicate).
  bool depends_on_sample() const;
  // Whether the mask can differ between heads (only user predicates can).
  bool depends_on_head() const;

  const detail::MaskNode& node() const { return *node_; }
  explicit Mask(std::shared_ptr<const detail::MaskNode> node) : node_(std::move(node)) {}

 private:
  std::shared_ptr<const detail::MaskNode> node_;
};

// Builds the BlockMask of `mask` for tensors of `batch` samples, `heads` query heads,
// q_len rows and kv_len columns. The result broadcasts (batch or heads = 1) over what the
// mask does not depend on. Tiles are exact: a partial tile has at least one visible and one
// masked element, where positions past q_len / kv_len count as masked. Data of one sample
// (lengths or ids of batch 1) apply to every sample, unless a user predicate is part of the mask.
// Throws flashflex::Error on sizes that do not match the mask's data, on lengths past kMaxSeqLen
// and on more than kMaxMaskTiles tiles (block_mask.hpp), before allocating.
HostBlockMask build_block_mask(const Mask& mask, int64_t batch, int64_t heads, int64_t q_len,
                               int64_t kv_len);

}  // namespace flashflex
