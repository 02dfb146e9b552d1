// Names of the score mods, for messages and the Python binding.
#include "flashflex/mods.hpp"

namespace flashflex {

const char* score_mod_name(ScoreModKind kind) {
  switch (kind) {
    case ScoreModKind::kNone: return "none";
    case ScoreModKind::kSoftcap: return "softcap";
    case ScoreModKind::kAlibi: return "alibi";
    case ScoreModKind::kBias: return "bias";
    case ScoreModKind::kLinked: return "linked";
  }
  return "unknown score mod";
}

}  // namespace flashflex
