// flashflex::detail::MaskNode: the immutable tree behind flashflex::Mask. A leaf holds one
// built-in predicate (src/mask/predicates.hpp) with the data it points into, or a user
// predicate; an inner node combines two subtrees with AND or OR. Built by the factories and
// operators in src/mask/mask.cpp, walked by Mask::operator() and by the CPU builder
// (src/cpu/block_mask_builder.cpp).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "flashflex/mask.hpp"
#include "mask/predicates.hpp"

namespace flashflex::detail {

enum class MaskKind {
  kBand,      // causal, sliding_window
  kDocument,  // document
  kPrefixLm,  // prefix_lm
  kPadding,   // padding
  kEagle3,    // eagle3
  kUser,      // predicate
  kAnd,       // lhs & rhs
  kOr,        // lhs | rhs
};

struct MaskNode {
  explicit MaskNode(MaskKind k, const char* n) : kind(k), name(n) {}
  // The predicates point into the vectors below: a node is never copied or moved.
  MaskNode(const MaskNode&) = delete;
  MaskNode& operator=(const MaskNode&) = delete;

  MaskKind kind;
  const char* name;             // the factory or operator that made the node, for messages
  int64_t batch = 0;            // samples the data of the subtree describe; 0: none
  bool depends_on_head = false;  // a user predicate is in the subtree

  // The leaf's predicate: the member matching `kind`.
  BandPredicate band{};
  DocumentPredicate document{};
  PrefixLmPredicate prefix_lm{};
  PaddingPredicate padding{};
  Eagle3Predicate eagle3{};
  Mask::Predicate user;

  // Owned data of the leaf, filled before the predicate's pointers are set.
  std::vector<int32_t> q_doc_ids;       // document: [batch, Q_LEN]
  std::vector<int32_t> kv_doc_ids;      // document: [batch, KV_LEN], empty: the same as q_doc_ids
  std::vector<int64_t> prefix_lengths;  // prefix_lm: [batch]
  std::vector<int64_t> q_lengths;       // padding: [batch] or empty
  std::vector<int64_t> kv_lengths;      // padding: [batch] or empty
  std::vector<int64_t> sample_lengths;  // eagle3: [batch] or empty

  // Operands of kAnd / kOr.
  std::shared_ptr<const MaskNode> lhs, rhs;
};

}  // namespace flashflex::detail
