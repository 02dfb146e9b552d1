// Validation of Eagle3ForwardArgs / Eagle3BackwardArgs: one function per concern (block lists,
// q against block 0, every block against block 0, sequence lengths, outputs). The per-tensor
// checks (layout, overflow, dtype, device, sizes, heads, head dim) are validate.cpp's, so the
// messages read as the general entry points' do: "k_blocks[2]: expected seq_len 17 (as
// k_blocks[0]), got 16 (sizes [...])".
#include "api/validate_eagle3.hpp"

#include "api/validate_limits.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace flashflex::detail {
namespace {

std::string element_name(const char* list, size_t index) {
  return std::string(list) + "[" + std::to_string(index) + "]";
}

// ---- block lists ---------------------------------------------------------------------------

void check_has_blocks(const std::vector<TensorRef>& k_blocks) {
  if (k_blocks.empty()) {
    fail(ErrorKind::kInvalidArgument, "k_blocks: expected at least one block (K_0), got 0");
  }
}

// `blocks` has one tensor per key block.
void check_block_count(const char* list, const std::vector<TensorRef>& blocks, size_t num_blocks) {
  if (blocks.size() != num_blocks) {
    fail(ErrorKind::kInvalidArgument, list, ": expected ", num_blocks, " blocks (as k_blocks), got ", blocks.size());
  }
}

// ---- q and block 0: the sizes everything else is checked against ---------------------------

Eagle3Shape check_q_and_first_block(const TensorRef& q, const TensorRef& k0, size_t num_blocks) {
  check_tensor("q", q, 4);
  check_seq_len("q", "seq_len", q.sizes[2]);
  check_float_dtype("q", q);
  check_tensor("k_blocks[0]", k0, 4);
  check_dtype("k_blocks[0]", k0, q.dtype, "as q");
  check_device("k_blocks[0]", k0, q.device);
  check_size("k_blocks[0]", k0, 0, q.sizes[0], "as q");
  check_size("k_blocks[0]", k0, 2, q.sizes[2], "as q");
  check_size("k_blocks[0]", k0, 3, q.sizes[3], "as q");
  Eagle3Shape s;
  s.batch = q.sizes[0];
  s.q_heads = q.sizes[1];
  s.kv_heads = k0.sizes[1];
  s.q_len = q.sizes[2];
  s.kv_len = k0.sizes[2];
  s.head_dim = q.sizes[3];
  s.v_head_dim = q.sizes[3];
  s.dtype = q.dtype;
  s.device = q.device;
  s.num_blocks = static_cast<int64_t>(num_blocks);
  check_heads("k_blocks[0]", s.q_heads, s.kv_heads);
  check_head_dim(s.head_dim, s.v_head_dim);
  return s;
}

// Every tensor of a block list shaped, typed and placed as k_blocks[0].
void check_blocks(const char* list, const std::vector<TensorRef>& blocks, const Eagle3Shape& s, bool output) {
  for (size_t j = 0; j < blocks.size(); ++j) {
    const std::string name = element_name(list, j);
    check_like(name.c_str(), blocks[j], s, s.kv_heads, s.kv_len, s.head_dim, "as k_blocks[0]", output);
  }
}

// ---- sequence lengths ----------------------------------------------------------------------

template <typename Int>
void check_length_values(const TensorRef& t, int64_t seq_len) {
  const Int* data = static_cast<const Int*>(t.data);
  for (int64_t b = 0; b < t.sizes[0]; ++b) {
    const int64_t length = static_cast<int64_t>(data[b * t.strides[0]]);
    if (length < 0 || length > seq_len) {
      fail(ErrorKind::kInvalidArgument, "seq_lengths[", b, "]: expected a length in [0, ", seq_len, "], got ",
           length);
    }
  }
}

// Optional int32 / int64 [B] on the tensors' device; values are read (and checked) only on the
// CPU, where no copy from the device is needed.
void check_seq_lengths(const TensorRef& t, const Eagle3Shape& s) {
  if (!t.defined()) return;
  check_tensor("seq_lengths", t, 1);
  if (t.dtype != DType::kInt32 && t.dtype != DType::kInt64) {
    fail(ErrorKind::kInvalidArgument, "seq_lengths: expected dtype int32 or int64, got ", dtype_name(t.dtype));
  }
  check_device("seq_lengths", t, s.device);
  check_size("seq_lengths", t, 0, s.batch, "one length per sample, as q");
  if (t.device.type != DeviceType::kCpu) return;
  if (t.dtype == DType::kInt32) {
    check_length_values<int32_t>(t, s.q_len);
  } else {
    check_length_values<int64_t>(t, s.q_len);
  }
}

// ---- block 0's prebuilt causal mask ---------------------------------------------------------

// Optional: built by build_eagle3_causal_mask for q's T on q's device (its bytes and pointer as
// that build needs them).
void check_causal_mask(const Eagle3CausalMask& m, const Eagle3Shape& s) {
  if (!m.defined()) return;
  if (m.device != s.device) {
    fail(ErrorKind::kInvalidArgument, "causal_mask: expected a mask built on q's device ", device_name(s.device), ":",
         s.device.index, ", got one of ", device_name(m.device), ":", m.device.index);
  }
  if (m.seq_len != s.q_len) {
    fail(ErrorKind::kInvalidArgument, "causal_mask: expected a mask built for seq_len ", s.q_len,
         " (as q), got one for ", m.seq_len);
  }
  const std::size_t needed = eagle3_causal_mask_size(s.q_len);
  if (m.bytes < needed || reinterpret_cast<std::uintptr_t>(m.data) % 256 != 0) {
    fail(ErrorKind::kInvalidArgument, "causal_mask: expected ", needed, " bytes at a 256-byte aligned address "
         "(build_eagle3_causal_mask), got ", m.bytes);
  }
}

// ---- the inputs both directions share ------------------------------------------------------

Eagle3Shape check_inputs(const TensorRef& q, const std::vector<TensorRef>& k_blocks,
                         const std::vector<TensorRef>& v_blocks, const TensorRef& seq_lengths) {
  check_has_blocks(k_blocks);
  check_block_count("v_blocks", v_blocks, k_blocks.size());
  const Eagle3Shape s = check_q_and_first_block(q, k_blocks[0], k_blocks.size());
  check_blocks("k_blocks", k_blocks, s, false);
  check_blocks("v_blocks", v_blocks, s, false);
  check_seq_lengths(seq_lengths, s);
  return s;
}

}  // namespace

Eagle3Shape validate_eagle3_forward(const Eagle3ForwardArgs& a) {
  const Eagle3Shape s = check_inputs(a.q, a.k_blocks, a.v_blocks, a.seq_lengths);
  check_like("out", a.out, s, s.q_heads, s.q_len, s.head_dim, "as q", true);
  if (a.lse.defined()) check_row_stat("lse", a.lse, s, true);
  check_scale(a.scale);
  check_causal_mask(a.causal_mask, s);
  return s;
}

Eagle3Shape validate_eagle3_backward(const Eagle3BackwardArgs& a) {
  const Eagle3Shape s = check_inputs(a.q, a.k_blocks, a.v_blocks, a.seq_lengths);
  check_like("out", a.out, s, s.q_heads, s.q_len, s.head_dim, "as q", false);
  check_like("dout", a.dout, s, s.q_heads, s.q_len, s.head_dim, "as out", false);
  check_row_stat("lse", a.lse, s, false);
  if (a.dlse.defined()) check_row_stat("dlse", a.dlse, s, false);
  check_like("dq", a.dq, s, s.q_heads, s.q_len, s.head_dim, "as q", true);
  check_block_count("dk_blocks", a.dk_blocks, a.k_blocks.size());
  check_block_count("dv_blocks", a.dv_blocks, a.k_blocks.size());
  check_blocks("dk_blocks", a.dk_blocks, s, true);
  check_blocks("dv_blocks", a.dv_blocks, s, true);
  check_scale(a.scale);
  check_causal_mask(a.causal_mask, s);
  return s;
}

}  // namespace flashflex::detail
