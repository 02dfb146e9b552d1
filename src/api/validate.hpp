// Argument validation of the public entry points: every check runs before any work, and each
// failure is a flashflex::Error naming the argument, what was expected and what was given.
// The per-tensor checks below are shared by validate.cpp (ForwardArgs / BackwardArgs) and
// validate_eagle3.cpp (the EAGLE3 structured path), so every entry point words them alike.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "api/message.hpp"
#include "flashflex/attention.hpp"

namespace flashflex::detail {

// The sizes every backend needs, read off validated arguments.
struct AttentionShape {
  int64_t batch = 0;
  int64_t q_heads = 0;
  int64_t kv_heads = 0;
  int64_t q_len = 0;
  int64_t kv_len = 0;
  int64_t head_dim = 0;
  int64_t v_head_dim = 0;
  DType dtype = DType::kFloat32;
  Device device{};
};

AttentionShape validate_forward(const ForwardArgs& args);
AttentionShape validate_backward(const BackwardArgs& args);

// args.scale, or 1 / sqrt(head_dim) when absent.
double resolve_scale(const std::optional<double>& scale, int64_t head_dim);

// ---- shared checks (validate.cpp) ------------------------------------------------------------
// Messages read "<name>: expected <what>, got <value>"; `why` completes the expectation, as in
// "expected seq_len 17 (as q)". Rank-4 dims are named batch, heads, seq_len, head_dim.

// Throws Error(kind, concatenation of parts).
template <typename... Parts>
[[noreturn]] void fail(ErrorKind kind, const Parts&... parts) {
  throw Error(kind, concat(parts...));
}

std::string sizes_str(const TensorRef& t);  // "[2, 4, 17, 64]"

// Present with `rank` dims, sizes >= 1, non-negative strides, non-null data, innermost stride 1,
// sizes within the int32 index range and offsets within int64.
void check_tensor(const char* name, const TensorRef& t, int rank);
// check_tensor, and no stride-0 (broadcast) dimension: outputs are written element by element.
void check_output(const char* name, const TensorRef& t, int rank);
void check_dtype(const char* name, const TensorRef& t, DType expected, const char* why);
void check_float_dtype(const char* name, const TensorRef& t);  // float32, float16 or bfloat16
void check_device(const char* name, const TensorRef& t, Device expected);
void check_size(const char* name, const TensorRef& t, int dim, int64_t expected, const char* why);
// kv_heads divides q_heads (grouped-query attention); kv_name names the key tensor.
void check_heads(const char* kv_name, int64_t q_heads, int64_t kv_heads);
// head_dim is compiled (supported_head_dims()) and v_head_dim equals it.
void check_head_dim(int64_t head_dim, int64_t v_head_dim);
// A rank-4 tensor [s.batch, heads, len, dim] of s's dtype and device (`output`: check_output).
void check_like(const char* name, const TensorRef& t, const AttentionShape& s, int64_t heads, int64_t len,
                int64_t dim, const char* why, bool output);
// A float32 row statistic [s.batch, s.q_heads, s.q_len] (lse, dlse) on s's device.
void check_row_stat(const char* name, const TensorRef& t, const AttentionShape& s, bool output);
void check_scale(const std::optional<double>& scale);  // absent or finite

}  // namespace flashflex::detail
