// Validation of ForwardArgs / BackwardArgs: one function per concern (presence, layout, dtype,
// device, shape, heads, head dim, index range, score mod, block mask). Messages follow
// "<argument>: expected <what>, got <value>". The per-tensor checks declared in validate.hpp
// are also used by validate_eagle3.cpp.
#include "api/validate.hpp"

#include "api/validate_limits.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace flashflex::detail {
namespace {

constexpr int64_t kMaxIndex = std::numeric_limits<int32_t>::max();
constexpr const char* kDimNames[] = {"batch", "heads", "seq_len", "head_dim"};

// ---- presence and layout -------------------------------------------------------------------

// The enums arrive as plain integers from bindings: an unknown code must not reach dtype_size
// (0 bytes) or the device dispatch.
void check_codes(const char* name, const TensorRef& t) {
  if (dtype_size(t.dtype) == 0) {
    fail(ErrorKind::kInvalidArgument, name, ": expected a dtype code of float32 (0), float16 (1), bfloat16 (2), ",
         "int32 (3) or int64 (4), got ", static_cast<int>(t.dtype));
  }
  if (t.device.type != DeviceType::kCpu && t.device.type != DeviceType::kCuda) {
    fail(ErrorKind::kInvalidArgument, name, ": expected device type cpu (0) or cuda (1), got ",
         static_cast<int>(t.device.type));
  }
  if (t.device.type == DeviceType::kCuda && t.device.index < 0) {
    fail(ErrorKind::kInvalidArgument, name, ": expected a CUDA device index >= 0, got ", t.device.index);
  }
}

void check_present(const char* name, const TensorRef& t, int rank) {
  if (!t.defined()) fail(ErrorKind::kInvalidArgument, name, ": expected a tensor, got none");
  if (t.rank != rank) {
    fail(ErrorKind::kInvalidArgument, name, ": expected ", rank, " dimensions, got ", t.rank, " (sizes ",
         sizes_str(t), ")");
  }
  for (int d = 0; d < t.rank; ++d) {
    if (t.sizes[d] < 1) {
      fail(ErrorKind::kInvalidArgument, name, ": expected every size >= 1, got size ", t.sizes[d],
           " in dimension ", d, " (sizes ", sizes_str(t), ")");
    }
    if (t.strides[d] < 0) {
      fail(ErrorKind::kInvalidArgument, name, ": expected non-negative strides, got stride ", t.strides[d],
           " in dimension ", d);
    }
  }
  if (t.data == nullptr) fail(ErrorKind::kInvalidArgument, name, ": expected a non-null data pointer, got null");
  check_codes(name, t);
}

void check_inner_stride(const char* name, const TensorRef& t) {
  const int64_t inner = t.strides[t.rank - 1];
  if (inner != 1 && t.sizes[t.rank - 1] > 1) {
    fail(ErrorKind::kInvalidArgument, name, ": expected innermost stride 1, got ", inner);
  }
}

// An output written element by element must not map two indices to one address.
void check_no_broadcast(const char* name, const TensorRef& t) {
  for (int d = 0; d < t.rank; ++d) {
    if (t.strides[d] == 0 && t.sizes[d] > 1) {
      fail(ErrorKind::kInvalidArgument, name, ": expected an output without broadcast (stride 0) dimensions, "
           "got stride 0 in dimension ", d, " of size ", t.sizes[d]);
    }
  }
}

// Sizes must fit the kernels' int32 row/column indices, and the largest element offset an int64.
void check_index_range(const char* name, const TensorRef& t) {
  for (int d = 0; d < t.rank; ++d) {
    if (t.sizes[d] > kMaxIndex) {
      fail(ErrorKind::kInvalidArgument, name, ": size ", t.sizes[d], " in dimension ", d,
           " overflows the int32 index range (max ", kMaxIndex, ")");
    }
  }
  // Largest byte offset = (sum of (size - 1) * stride + 1) * element size, accumulated with an
  // overflow check at every step (sizes are already below 2^31, strides non-negative).
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  const int64_t element = static_cast<int64_t>(dtype_size(t.dtype));
  int64_t max_offset = 0;
  bool overflow = false;
  for (int d = 0; d < t.rank && !overflow; ++d) {
    const int64_t extent = t.sizes[d] - 1;
    if (extent > 0 && t.strides[d] > (kMax - max_offset) / extent) {
      overflow = true;
    } else {
      max_offset += extent * t.strides[d];
    }
  }
  if (overflow || max_offset >= kMax / element) {
    fail(ErrorKind::kInvalidArgument, name, ": sizes ", sizes_str(t),
         " with its strides overflow the int64 offset range");
  }
}

}  // namespace

std::string sizes_str(const TensorRef& t) {
  std::string out = "[";
  for (int d = 0; d < t.rank; ++d) out += (d ? ", " : "") + std::to_string(t.sizes[d]);
  return out + "]";
}

void check_tensor(const char* name, const TensorRef& t, int rank) {
  check_present(name, t, rank);
  check_inner_stride(name, t);
  check_index_range(name, t);
}

void check_output(const char* name, const TensorRef& t, int rank) {
  check_tensor(name, t, rank);
  check_no_broadcast(name, t);
}

// ---- dtype, device, shape ------------------------------------------------------------------

void check_dtype(const char* name, const TensorRef& t, DType expected, const char* why) {
  if (t.dtype != expected) {
    fail(ErrorKind::kInvalidArgument, name, ": expected dtype ", dtype_name(expected), " (", why, "), got ",
         dtype_name(t.dtype));
  }
}

void check_device(const char* name, const TensorRef& t, Device expected) {
  if (t.device != expected) {
    fail(ErrorKind::kInvalidArgument, name, ": expected device ", device_name(expected), ":", expected.index,
         " (as q), got ", device_name(t.device), ":", t.device.index);
  }
}

void check_size(const char* name, const TensorRef& t, int dim, int64_t expected, const char* why) {
  if (t.sizes[dim] != expected) {
    fail(ErrorKind::kInvalidArgument, name, ": expected ", kDimNames[dim], " ", expected, " (", why, "), got ",
         t.sizes[dim], " (sizes ", sizes_str(t), ")");
  }
}

void check_float_dtype(const char* name, const TensorRef& t) {
  switch (t.dtype) {
    case DType::kFloat32:
    case DType::kFloat16:
    case DType::kBFloat16:
      return;
    case DType::kInt32:
    case DType::kInt64:
      fail(ErrorKind::kInvalidArgument, name, ": expected dtype float32, float16 or bfloat16, got ",
           dtype_name(t.dtype));
  }
  fail(ErrorKind::kInvalidArgument, name, ": expected dtype float32, float16 or bfloat16, got dtype code ",
       static_cast<int>(t.dtype));
}

void check_heads(const char* kv_name, int64_t q_heads, int64_t kv_heads) {
  if (q_heads % kv_heads != 0) {
    fail(ErrorKind::kInvalidArgument, kv_name, ": expected a number of heads dividing q's ", q_heads,
         " heads (grouped-query attention), got ", kv_heads);
  }
}

void check_head_dim(int64_t head_dim, int64_t v_head_dim) {
  const auto& dims = supported_head_dims();
  if (std::find(dims.begin(), dims.end(), head_dim) == dims.end()) {
    std::string list;
    for (size_t i = 0; i < dims.size(); ++i) list += (i ? ", " : "") + std::to_string(dims[i]);
    fail(ErrorKind::kUnsupported, "q: expected head_dim in {", list, "}, got ", head_dim);
  }
  if (v_head_dim != head_dim) {
    fail(ErrorKind::kUnsupported, "v: expected head_dim ", head_dim, " (as q), got ", v_head_dim);
  }
}

namespace {

// q, k, v: the inputs every entry point shares.
AttentionShape check_qkv(const TensorRef& q, const TensorRef& k, const TensorRef& v) {
  check_tensor("q", q, 4);
  check_tensor("k", k, 4);
  check_tensor("v", v, 4);
  check_seq_len("q", "seq_len", q.sizes[2]);
  check_seq_len("k", "seq_len", k.sizes[2]);
  check_float_dtype("q", q);
  check_dtype("k", k, q.dtype, "as q");
  check_dtype("v", v, q.dtype, "as q");
  check_device("k", k, q.device);
  check_device("v", v, q.device);
  check_size("k", k, 0, q.sizes[0], "as q");
  check_size("k", k, 3, q.sizes[3], "as q");
  check_size("v", v, 0, q.sizes[0], "as q");
  check_size("v", v, 1, k.sizes[1], "as k");
  check_size("v", v, 2, k.sizes[2], "as k");
  AttentionShape s;
  s.batch = q.sizes[0];
  s.q_heads = q.sizes[1];
  s.kv_heads = k.sizes[1];
  s.q_len = q.sizes[2];
  s.kv_len = k.sizes[2];
  s.head_dim = q.sizes[3];
  s.v_head_dim = v.sizes[3];
  s.dtype = q.dtype;
  s.device = q.device;
  check_heads("k", s.q_heads, s.kv_heads);
  check_head_dim(s.head_dim, s.v_head_dim);
  return s;
}

}  // namespace

// A tensor shaped like q / k / v / out (same dtype and device).
void check_like(const char* name, const TensorRef& t, const AttentionShape& s, int64_t heads, int64_t len,
                int64_t dim, const char* why, bool output) {
  output ? check_output(name, t, 4) : check_tensor(name, t, 4);
  check_dtype(name, t, s.dtype, "as q");
  check_device(name, t, s.device);
  check_size(name, t, 0, s.batch, why);
  check_size(name, t, 1, heads, why);
  check_size(name, t, 2, len, why);
  check_size(name, t, 3, dim, why);
}

// lse-shaped float32 [B, Hq, Q_LEN].
void check_row_stat(const char* name, const TensorRef& t, const AttentionShape& s, bool output) {
  output ? check_output(name, t, 3) : check_tensor(name, t, 3);
  check_dtype(name, t, DType::kFloat32, "row statistics are float32");
  check_device(name, t, s.device);
  check_size(name, t, 0, s.batch, "as q");
  check_size(name, t, 1, s.q_heads, "as q");
  check_size(name, t, 2, s.q_len, "as q");
}

void check_scale(const std::optional<double>& scale) {
  if (scale && !std::isfinite(*scale)) {
    fail(ErrorKind::kInvalidArgument, "scale: expected a finite number, got ", *scale);
  }
}

namespace {

// ---- score mod -----------------------------------------------------------------------------

void check_score_mod(const ScoreMod& mod, const AttentionShape& s) {
  switch (mod.kind) {
    case ScoreModKind::kNone:
      return;
    case ScoreModKind::kSoftcap:
      if (!(std::isfinite(mod.softcap) && mod.softcap > 0)) {
        fail(ErrorKind::kInvalidArgument, "score_mod.softcap: expected a finite cap > 0, got ", mod.softcap);
      }
      return;
    case ScoreModKind::kAlibi: {
      const TensorRef& t = mod.alibi_slopes;
      check_tensor("score_mod.alibi_slopes", t, 1);
      check_dtype("score_mod.alibi_slopes", t, DType::kFloat32, "ALiBi slopes are float32");
      check_device("score_mod.alibi_slopes", t, s.device);
      if (t.sizes[0] != s.q_heads) {
        fail(ErrorKind::kInvalidArgument, "score_mod.alibi_slopes: expected ", s.q_heads,
             " slopes (one per query head), got ", t.sizes[0]);
      }
      return;
    }
    case ScoreModKind::kBias: {
      const TensorRef& t = mod.bias;
      check_tensor("score_mod.bias", t, 4);
      check_float_dtype("score_mod.bias", t);
      check_device("score_mod.bias", t, s.device);
      const int64_t expected[4] = {s.batch, s.q_heads, s.q_len, s.kv_len};
      for (int d = 0; d < 4; ++d) {
        const bool broadcastable = d < 2 && t.sizes[d] == 1;
        if (t.sizes[d] != expected[d] && !broadcastable) {
          fail(ErrorKind::kInvalidArgument, "score_mod.bias: expected sizes [", s.batch, " or 1, ", s.q_heads,
               " or 1, ", s.q_len, ", ", s.kv_len, "], got ", sizes_str(t));
        }
      }
      return;
    }
    case ScoreModKind::kLinked: {
      if (s.device.type != DeviceType::kCuda) {
        fail(ErrorKind::kUnsupported, "score_mod: a linked score mod runs on CUDA tensors only, got ",
             device_name(s.device), " tensors");
      }
      if (mod.linked_kernel == nullptr) {
        fail(ErrorKind::kInvalidArgument,
             "score_mod.linked_kernel: expected a handle from load_linked_kernel, got null");
      }
      if (mod.num_hook_tensors < 0 || mod.num_hook_tensors > kMaxHookTensors) {
        fail(ErrorKind::kInvalidArgument, "score_mod.num_hook_tensors: expected 0 to ", kMaxHookTensors, ", got ",
             mod.num_hook_tensors);
      }
      for (int i = 0; i < mod.num_hook_tensors; ++i) {
        const HookTensor& t = mod.hook_tensors[i];
        bool empty = false;
        for (int d = 0; d < kHookTensorDims; ++d) {
          if (t.size[d] < 0) {
            fail(ErrorKind::kInvalidArgument, "score_mod.hook_tensors[", i, "]: expected sizes >= 0, got ", t.size[d],
                 " in dim ", d);
          }
          empty = empty || t.size[d] == 0;
        }
        if (t.data == nullptr && !empty) {
          fail(ErrorKind::kInvalidArgument, "score_mod.hook_tensors[", i, "]: expected data, got a null pointer");
        }
        if (t.dtype < 0 || t.dtype > 8) {
          fail(ErrorKind::kInvalidArgument, "score_mod.hook_tensors[", i, "]: expected a dtype code 0 to 8, got ",
               t.dtype);
        }
      }
      return;
    }
  }
  fail(ErrorKind::kInvalidArgument, "score_mod.kind: expected none, softcap, alibi, bias or linked, got ",
       static_cast<int>(mod.kind));
}

// ---- block mask ----------------------------------------------------------------------------

void check_block_mask_sizes(const BlockMask& m, const AttentionShape& s) {
  if (m.device != s.device) {
    fail(ErrorKind::kInvalidArgument, "block_mask: expected device ", device_name(s.device), ":", s.device.index,
         " (as q), got ", device_name(m.device), ":", m.device.index);
  }
  if (m.q_len != s.q_len || m.kv_len != s.kv_len) {
    fail(ErrorKind::kInvalidArgument, "block_mask: expected sizes (q_len ", s.q_len, ", kv_len ", s.kv_len,
         ") as q and k, got (", m.q_len, ", ", m.kv_len, ")");
  }
  if (m.num_q_tiles != num_tiles(s.q_len) || m.num_kv_tiles != num_tiles(s.kv_len)) {
    fail(ErrorKind::kInvalidArgument, "block_mask: expected (", num_tiles(s.q_len), ", ", num_tiles(s.kv_len),
         ") tiles of ", kTileSize, " for q_len ", s.q_len, " and kv_len ", s.kv_len, ", got (", m.num_q_tiles,
         ", ", m.num_kv_tiles, ")");
  }
  if (m.batch != 1 && m.batch != s.batch) {
    fail(ErrorKind::kInvalidArgument, "block_mask: expected batch ", s.batch, " or 1 (as q), got ", m.batch);
  }
  if (m.heads != 1 && m.heads != s.q_heads) {
    fail(ErrorKind::kInvalidArgument, "block_mask: expected heads ", s.q_heads, " or 1 (as q), got ", m.heads);
  }
  if (m.num_partial_tiles < 0) {
    fail(ErrorKind::kInvalidArgument, "block_mask: expected num_partial_tiles >= 0, got ", m.num_partial_tiles);
  }
  const std::pair<const char*, const void*> arrays[] = {
      {"kv_num_blocks", m.kv_num_blocks},   {"kv_indices", m.kv_indices},
      {"full_kv_num_blocks", m.full_kv_num_blocks}, {"full_kv_indices", m.full_kv_indices},
      {"q_num_blocks", m.q_num_blocks},     {"q_indices", m.q_indices},
      {"full_q_num_blocks", m.full_q_num_blocks},   {"full_q_indices", m.full_q_indices},
      {"partial_tile_ids", m.partial_tile_ids},
  };
  for (const auto& [name, ptr] : arrays) {
    if (ptr == nullptr) fail(ErrorKind::kInvalidArgument, "block_mask.", name, ": expected a non-null pointer, got null");
  }
  if (m.num_partial_tiles > 0 && m.bitmaps == nullptr) {
    fail(ErrorKind::kInvalidArgument, "block_mask.bitmaps: expected a non-null pointer for ", m.num_partial_tiles,
         " partial tiles, got null");
  }
}

// One direction of the tile lists: per row r of `rows`, counts[r] partial and full_counts[r] full
// entries, each an index below `cols`; partial entries must have a bitmap.
void check_tile_lists(const BlockMask& m, const char* name, const int32_t* counts, const int32_t* indices,
                      const int32_t* full_counts, const int32_t* full_indices, int64_t rows, int64_t cols,
                      bool rows_are_q_tiles) {
  const int64_t n_rows = m.batch * m.heads * rows;
  std::vector<int64_t> seen_in_row(cols, -1);  // last row that listed each tile
  for (int64_t r = 0; r < n_rows; ++r) {
    const int64_t c = counts[r], fc = full_counts[r];
    if (c < 0 || fc < 0 || c + fc > cols) {
      fail(ErrorKind::kInvalidArgument, "block_mask: expected ", name, " counts in [0, ", cols,
           "] with partial + full <= ", cols, ", got partial ", c, " and full ", fc, " at row ", r);
    }
    for (int64_t i = 0; i < c + fc; ++i) {
      const int64_t idx = i < c ? indices[r * cols + i] : full_indices[r * cols + (i - c)];
      if (idx < 0 || idx >= cols) {
        fail(ErrorKind::kInvalidArgument, "block_mask: expected ", name, " indices in [0, ", cols, "), got ", idx,
             " at row ", r);
      }
      if (seen_in_row[idx] == r) {
        fail(ErrorKind::kInvalidArgument, "block_mask: expected each tile at most once in the ", name,
             " lists (partial and full together), got tile ", idx, " twice at row ", r);
      }
      seen_in_row[idx] = r;
      if (i >= c) continue;
      const int64_t bh = r / rows, tile = r % rows;
      const int64_t m_tile = rows_are_q_tiles ? tile : idx;
      const int64_t n_tile = rows_are_q_tiles ? idx : tile;
      const int64_t id = m.partial_tile_ids[(bh * m.num_q_tiles + m_tile) * m.num_kv_tiles + n_tile];
      if (id < 0 || id >= m.num_partial_tiles) {
        fail(ErrorKind::kInvalidArgument, "block_mask.partial_tile_ids: expected a bitmap index in [0, ",
             m.num_partial_tiles, ") for partial tile (", m_tile, ", ", n_tile, "), got ", id);
      }
    }
  }
}

// Host masks are read element by element by the CPU path, so their contents are checked too.
void check_block_mask_contents(const BlockMask& m) {
  check_tile_lists(m, "kv", m.kv_num_blocks, m.kv_indices, m.full_kv_num_blocks, m.full_kv_indices,
                   m.num_q_tiles, m.num_kv_tiles, true);
  check_tile_lists(m, "q", m.q_num_blocks, m.q_indices, m.full_q_num_blocks, m.full_q_indices, m.num_kv_tiles,
                   m.num_q_tiles, false);
}

void check_block_mask(const BlockMask* m, const AttentionShape& s) {
  if (m == nullptr) return;
  check_block_mask_sizes(*m, s);
  if (m->device.type == DeviceType::kCpu) check_block_mask_contents(*m);
}

}  // namespace

AttentionShape validate_forward(const ForwardArgs& a) {
  AttentionShape s = check_qkv(a.q, a.k, a.v);
  check_like("out", a.out, s, s.q_heads, s.q_len, s.v_head_dim, "as q, with v's head_dim", true);
  if (a.lse.defined()) check_row_stat("lse", a.lse, s, true);
  check_scale(a.scale);
  check_score_mod(a.score_mod, s);
  check_block_mask(a.block_mask, s);
  return s;
}

AttentionShape validate_backward(const BackwardArgs& a) {
  AttentionShape s = check_qkv(a.q, a.k, a.v);
  check_like("out", a.out, s, s.q_heads, s.q_len, s.v_head_dim, "as q, with v's head_dim", false);
  check_like("dout", a.dout, s, s.q_heads, s.q_len, s.v_head_dim, "as out", false);
  check_row_stat("lse", a.lse, s, false);
  if (a.dlse.defined()) check_row_stat("dlse", a.dlse, s, false);
  check_like("dq", a.dq, s, s.q_heads, s.q_len, s.head_dim, "as q", true);
  check_like("dk", a.dk, s, s.kv_heads, s.kv_len, s.head_dim, "as k", true);
  check_like("dv", a.dv, s, s.kv_heads, s.kv_len, s.v_head_dim, "as v", true);
  check_scale(a.scale);
  check_score_mod(a.score_mod, s);
  if (a.dbias.defined()) {
    if (a.score_mod.kind != ScoreModKind::kBias) {
      fail(ErrorKind::kInvalidArgument, "dbias: expected only with score_mod bias, got score_mod ",
           score_mod_name(a.score_mod.kind));
    }
    const TensorRef& bias = a.score_mod.bias;
    check_output("dbias", a.dbias, 4);
    check_dtype("dbias", a.dbias, bias.dtype, "as score_mod.bias");
    check_device("dbias", a.dbias, s.device);
    for (int d = 0; d < 4; ++d) {
      if (a.dbias.sizes[d] != bias.sizes[d]) {
        fail(ErrorKind::kInvalidArgument, "dbias: expected sizes ", sizes_str(bias), " (as score_mod.bias), got ",
             sizes_str(a.dbias));
      }
    }
  }
  check_block_mask(a.block_mask, s);
  return s;
}

double resolve_scale(const std::optional<double>& scale, int64_t head_dim) {
  return scale ? *scale : 1.0 / std::sqrt(static_cast<double>(head_dim));
}

}  // namespace flashflex::detail
