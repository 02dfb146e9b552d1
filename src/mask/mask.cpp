// flashflex::Mask: the factories of the built-in masks, & and |, and element-wise evaluation.
// Each factory checks its arguments and builds one leaf of the tree in src/mask/mask_node.hpp;
// the predicates themselves live in src/mask/predicates.hpp. The CPU builder that turns a
// Mask into a BlockMask is src/cpu/block_mask_builder.cpp.
#include "flashflex/mask.hpp"

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "flashflex/error.hpp"
#include "mask/mask_node.hpp"

namespace flashflex {
namespace {

using detail::MaskKind;
using detail::MaskNode;

constexpr int64_t kInt64Min = std::numeric_limits<int64_t>::min();
constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();

[[noreturn]] void invalid(const std::string& message) {
  throw Error(ErrorKind::kInvalidArgument, message);
}

void require_non_negative(const char* mask, const char* arg, int64_t value) {
  if (value < 0) {
    invalid(std::string(mask) + ": expected " + arg + " >= 0, got " + std::to_string(value));
  }
}

void require_non_negative(const char* mask, const char* arg, const std::vector<int64_t>& values) {
  for (size_t i = 0; i < values.size(); ++i) {
    if (values[i] < 0) {
      invalid(std::string(mask) + ": expected " + arg + "[" + std::to_string(i) + "] >= 0, got " +
              std::to_string(values[i]));
    }
  }
}

// offset - left and offset + right for left, right >= 0, clamped to the int64 range: a band
// edge beyond any reachable kv - q (|kv - q| < 2^31) acts the same as the exact value.
int64_t saturating_sub(int64_t offset, int64_t left) {
  return offset < kInt64Min + left ? kInt64Min : offset - left;
}
int64_t saturating_add(int64_t offset, int64_t right) {
  return offset > kInt64Max - right ? kInt64Max : offset + right;
}

const int64_t* data_or_null(const std::vector<int64_t>& v) {
  return v.empty() ? nullptr : v.data();
}

Mask band(const char* name, int64_t min_diff, int64_t max_diff) {
  auto node = std::make_shared<MaskNode>(MaskKind::kBand, name);
  node->band = detail::BandPredicate{min_diff, max_diff};
  return Mask(std::move(node));
}

Mask combine(MaskKind kind, const char* name, std::shared_ptr<const MaskNode> a,
             std::shared_ptr<const MaskNode> b) {
  if (a->batch > 0 && b->batch > 0 && a->batch != b->batch) {
    invalid(std::string(name) + ": expected operands describing the same batch, got " +
            std::to_string(a->batch) + " and " + std::to_string(b->batch) + " samples");
  }
  auto node = std::make_shared<MaskNode>(kind, name);
  node->batch = a->batch > 0 ? a->batch : b->batch;
  node->depends_on_head = a->depends_on_head || b->depends_on_head;
  node->lhs = std::move(a);
  node->rhs = std::move(b);
  return Mask(std::move(node));
}

}  // namespace

Mask Mask::causal(int64_t offset) { return band("causal", kInt64Min, offset); }

Mask Mask::sliding_window(int64_t left, int64_t right, int64_t offset) {
  require_non_negative("sliding_window", "left", left);
  require_non_negative("sliding_window", "right", right);
  return band("sliding_window", saturating_sub(offset, left), saturating_add(offset, right));
}

Mask Mask::document(std::vector<int32_t> q_doc_ids, std::vector<int32_t> kv_doc_ids,
                    int64_t batch) {
  if (batch < 1) invalid("document: expected batch >= 1, got " + std::to_string(batch));
  auto node = std::make_shared<MaskNode>(MaskKind::kDocument, "document");
  node->batch = batch;
  node->q_doc_ids = std::move(q_doc_ids);
  node->kv_doc_ids = std::move(kv_doc_ids);
  const std::vector<int32_t>& kv_ids =
      node->kv_doc_ids.empty() ? node->q_doc_ids : node->kv_doc_ids;
  // The strides are the per-sample lengths if the sizes are right; the builder checks them.
  node->document = detail::DocumentPredicate{
      node->q_doc_ids.data(), kv_ids.data(), static_cast<int64_t>(node->q_doc_ids.size()) / batch,
      static_cast<int64_t>(kv_ids.size()) / batch};
  return Mask(std::move(node));
}

Mask Mask::prefix_lm(std::vector<int64_t> prefix_lengths) {
  if (prefix_lengths.empty()) {
    invalid("prefix_lm: expected prefix_lengths of at least one sample, got none");
  }
  require_non_negative("prefix_lm", "prefix_lengths", prefix_lengths);
  auto node = std::make_shared<MaskNode>(MaskKind::kPrefixLm, "prefix_lm");
  node->batch = static_cast<int64_t>(prefix_lengths.size());
  node->prefix_lengths = std::move(prefix_lengths);
  node->prefix_lm = detail::PrefixLmPredicate{node->prefix_lengths.data()};
  return Mask(std::move(node));
}

Mask Mask::padding(std::vector<int64_t> q_lengths, std::vector<int64_t> kv_lengths) {
  if (!q_lengths.empty() && !kv_lengths.empty() && q_lengths.size() != kv_lengths.size()) {
    invalid("padding: expected kv_lengths of size " + std::to_string(q_lengths.size()) +
            " (as q_lengths), got " + std::to_string(kv_lengths.size()));
  }
  require_non_negative("padding", "q_lengths", q_lengths);
  require_non_negative("padding", "kv_lengths", kv_lengths);
  auto node = std::make_shared<MaskNode>(MaskKind::kPadding, "padding");
  node->batch = static_cast<int64_t>(q_lengths.empty() ? kv_lengths.size() : q_lengths.size());
  node->q_lengths = std::move(q_lengths);
  node->kv_lengths = std::move(kv_lengths);
  node->padding =
      detail::PaddingPredicate{data_or_null(node->q_lengths), data_or_null(node->kv_lengths)};
  return Mask(std::move(node));
}

Mask Mask::eagle3(int64_t step, int64_t block_len, std::vector<int64_t> lengths) {
  require_non_negative("eagle3", "step", step);
  if (block_len < 1) invalid("eagle3: expected block_len >= 1, got " + std::to_string(block_len));
  require_non_negative("eagle3", "lengths", lengths);
  // A sample holds at most block_len tokens: a longer length would silently act as block_len.
  for (size_t i = 0; i < lengths.size(); ++i) {
    if (lengths[i] > block_len) {
      invalid("eagle3: expected lengths[" + std::to_string(i) + "] <= block_len " + std::to_string(block_len) +
              ", got " + std::to_string(lengths[i]));
    }
  }
  auto node = std::make_shared<MaskNode>(MaskKind::kEagle3, "eagle3");
  node->batch = static_cast<int64_t>(lengths.size());
  node->sample_lengths = std::move(lengths);
  node->eagle3 = detail::Eagle3Predicate{step, block_len, data_or_null(node->sample_lengths)};
  return Mask(std::move(node));
}

Mask Mask::predicate(Predicate fn) {
  if (!fn) invalid("predicate: expected a callable, got an empty function");
  auto node = std::make_shared<MaskNode>(MaskKind::kUser, "predicate");
  node->depends_on_head = true;
  node->user = std::move(fn);
  return Mask(std::move(node));
}

Mask operator&(const Mask& a, const Mask& b) {
  return combine(MaskKind::kAnd, "operator&", a.node_, b.node_);
}
Mask operator|(const Mask& a, const Mask& b) {
  return combine(MaskKind::kOr, "operator|", a.node_, b.node_);
}

int64_t Mask::batch() const { return node_->batch; }
bool Mask::depends_on_head() const { return node_->depends_on_head; }
// A user predicate (the only source of head dependence) may read b as well.
bool Mask::depends_on_sample() const { return batch() > 0 || node_->depends_on_head; }

namespace {

// Throws unless sample b has data in a leaf that holds per-sample data.
void check_sample(const MaskNode& node, int64_t b) {
  if (node.batch > 0 && (b < 0 || b >= node.batch)) {
    invalid(std::string(node.name) + ": expected sample b in [0, " + std::to_string(node.batch) +
            "), got " + std::to_string(b));
  }
}

void check_document_index(const char* arg, const std::vector<int32_t>& ids, int64_t batch,
                          int64_t index) {
  const int64_t size = static_cast<int64_t>(ids.size());
  if (size % batch != 0) {
    invalid(std::string("document: expected a size of ") + arg + "_doc_ids divisible by batch " +
            std::to_string(batch) + ", got " + std::to_string(size));
  }
  if (index < 0 || index >= size / batch) {
    invalid(std::string("document: expected ") + arg + " in [0, " + std::to_string(size / batch) +
            "), got " + std::to_string(index));
  }
}

bool evaluate(const MaskNode& node, int64_t b, int64_t h, int64_t q, int64_t kv) {
  check_sample(node, b);
  switch (node.kind) {
    case MaskKind::kBand:
      return node.band.visible(b, q, kv);
    case MaskKind::kDocument:
      check_document_index("q", node.q_doc_ids, node.batch, q);
      check_document_index("kv", node.kv_doc_ids.empty() ? node.q_doc_ids : node.kv_doc_ids,
                           node.batch, kv);
      return node.document.visible(b, q, kv);
    case MaskKind::kPrefixLm:
      return node.prefix_lm.visible(b, q, kv);
    case MaskKind::kPadding:
      return node.padding.visible(b, q, kv);
    case MaskKind::kEagle3:
      return node.eagle3.visible(b, q, kv);
    case MaskKind::kUser:
      return node.user(b, h, q, kv);
    case MaskKind::kAnd:
      return evaluate(*node.lhs, b, h, q, kv) && evaluate(*node.rhs, b, h, q, kv);
    case MaskKind::kOr:
      return evaluate(*node.lhs, b, h, q, kv) || evaluate(*node.rhs, b, h, q, kv);
  }
  throw Error(ErrorKind::kInternal, "Mask: unknown node kind");
}

}  // namespace

bool Mask::operator()(int64_t b, int64_t h, int64_t q, int64_t kv) const {
  return evaluate(*node_, b, h, q, kv);
}

}  // namespace flashflex
