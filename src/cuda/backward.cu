// Host side of the CUDA backward (flashflex::cuda::backward and backward_workspace_size,
// src/cuda/launch.hpp): checks what the kernels need beyond src/api/validate.cpp (16-bit dtype,
// 16-byte aligned rows, grid limits, workspace size, deterministic mode's limits), lays out the
// workspace, fills sm80::BwdParams and runs, on the caller's stream:
//   memsets (dQ accumulator, dbias accumulator, semaphores)        cudaMemsetAsync
//   [deterministic with a block mask] dQ order of the kv tiles     sm80/preprocess_bwd.cuh
//   preprocess: LSE2, dpsum = rowsum(dO * O) - dlse                 sm80/preprocess_bwd.cuh
//   main kernel (closed table over dtype x head dim x score mod)    sm80/launch_bwd.hpp, bwd_*.cu
//   [the caller's row pass: EAGLE3 row-local keys]                  src/cuda/eagle3.cu
//   dq = dQacc * scale; dbias from its fp32 accumulator;            sm80/convert_dq_bwd.cuh
//   dk, dv summed over the CTAs of a split GQA group
// GQA: a CTA walks heads_per_cta query heads of its group (choose_heads_per_cta below); the
// group's other heads go to sibling CTAs whose fp32 dK / dV partials are summed in fixed order.
// Nothing synchronizes; every call and launch is checked.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>

#include "cuda/launch.hpp"
#include "cuda/launch_common.hpp"
#include "cuda/sm80/convert_dq_bwd.cuh"
#include "cuda/sm80/launch_bwd.hpp"
#include "cuda/sm80/params_bwd.hpp"
#include "cuda/sm80/preprocess_bwd.cuh"

namespace flashflex::cuda {
namespace {

// ---- the compiled table ----------------------------------------------------------------------

using LaunchBwd = void (*)(const sm80::BwdParams&, void*);

struct BwdKernel {
  DType dtype;
  int head_dim;
  ScoreModKind mod;
  LaunchBwd main;  // the main kernel (instantiated in sm80/bwd_<dtype>_hdim<D>.cu)
  LaunchBwd pre;   // preprocess, dq conversion, dk / dv reduction (instantiated here: they do not
  LaunchBwd post;  // depend on the score mod)
  LaunchBwd reduce;
};

template <typename T, int kHeadDim>
void launch_preprocess(const sm80::BwdParams& p, void* stream) {
  constexpr int kRowsPerBlock = sm80::kPreprocessThreads / (kHeadDim / 8);
  const int64_t rows = static_cast<int64_t>(p.batch) * p.q_heads * p.q_len_pad;
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  sm80::bwd_preprocess_kernel<T, kHeadDim>
      <<<static_cast<unsigned>(blocks), sm80::kPreprocessThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  FLASHFLEX_CUDA_CHECK(cudaGetLastError());
}

template <typename T, int kHeadDim>
void launch_convert_dq(const sm80::BwdParams& p, void* stream) {
  const int64_t chunks = static_cast<int64_t>(p.batch) * p.q_heads * p.q_len * (kHeadDim / 8);
  const int64_t blocks = (chunks + sm80::kConvertThreads - 1) / sm80::kConvertThreads;
  sm80::bwd_convert_dq_kernel<T, kHeadDim>
      <<<static_cast<unsigned>(blocks), sm80::kConvertThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  FLASHFLEX_CUDA_CHECK(cudaGetLastError());
}

template <typename T, int kHeadDim>
void launch_reduce_dkv(const sm80::BwdParams& p, void* stream) {
  const int64_t chunks = static_cast<int64_t>(p.batch) * p.kv_heads * p.kv_len * (kHeadDim / 8);
  const int64_t blocks = (chunks + sm80::kConvertThreads - 1) / sm80::kConvertThreads;
  sm80::bwd_reduce_dkv_kernel<T, kHeadDim>
      <<<static_cast<unsigned>(blocks), sm80::kConvertThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  FLASHFLEX_CUDA_CHECK(cudaGetLastError());
}

template <DType kDType, int kHeadDim, ScoreModKind kMod>
constexpr BwdKernel bwd_kernel() {
  using T = std::conditional_t<kDType == DType::kBFloat16, __nv_bfloat16, __half>;
  return {kDType, kHeadDim, kMod, &sm80::launch_bwd_main<kDType, kHeadDim, kMod>, &launch_preprocess<T, kHeadDim>,
          &launch_convert_dq<T, kHeadDim>, &launch_reduce_dkv<T, kHeadDim>};
}

constexpr DType kBf16 = DType::kBFloat16;
constexpr DType kFp16 = DType::kFloat16;
constexpr ScoreModKind kNone = ScoreModKind::kNone;
constexpr ScoreModKind kSoftcap = ScoreModKind::kSoftcap;
constexpr ScoreModKind kAlibi = ScoreModKind::kAlibi;
constexpr ScoreModKind kBias = ScoreModKind::kBias;

// The compiled set: {bfloat16, float16} x head dim {64, 128, 256} x every score mod.
constexpr BwdKernel kBwdKernels[] = {
    bwd_kernel<kBf16, 64, kNone>(),    bwd_kernel<kBf16, 64, kSoftcap>(),  bwd_kernel<kBf16, 64, kAlibi>(),
    bwd_kernel<kBf16, 64, kBias>(),    bwd_kernel<kBf16, 128, kNone>(),    bwd_kernel<kBf16, 128, kSoftcap>(),
    bwd_kernel<kBf16, 128, kAlibi>(),  bwd_kernel<kBf16, 128, kBias>(),    bwd_kernel<kBf16, 256, kNone>(),
    bwd_kernel<kBf16, 256, kSoftcap>(), bwd_kernel<kBf16, 256, kAlibi>(),  bwd_kernel<kBf16, 256, kBias>(),
    bwd_kernel<kFp16, 64, kNone>(),    bwd_kernel<kFp16, 64, kSoftcap>(),  bwd_kernel<kFp16, 64, kAlibi>(),
    bwd_kernel<kFp16, 64, kBias>(),    bwd_kernel<kFp16, 128, kNone>(),    bwd_kernel<kFp16, 128, kSoftcap>(),
    bwd_kernel<kFp16, 128, kAlibi>(),  bwd_kernel<kFp16, 128, kBias>(),    bwd_kernel<kFp16, 256, kNone>(),
    bwd_kernel<kFp16, 256, kSoftcap>(), bwd_kernel<kFp16, 256, kAlibi>(),  bwd_kernel<kFp16, 256, kBias>(),
};

const BwdKernel& find_bwd_kernel(DType dtype, int64_t head_dim, ScoreModKind mod) {
  for (const BwdKernel& k : kBwdKernels) {
    if (k.dtype == dtype && k.head_dim == head_dim && k.mod == mod) return k;
  }
  std::string built;
  for (const BwdKernel& k : kBwdKernels) {
    built += flashflex::detail::concat(" (", dtype_name(k.dtype), ", ", k.head_dim, ", ", score_mod_name(k.mod), ")");
  }
  throw Error(ErrorKind::kUnsupported,
              flashflex::detail::concat("q: no CUDA backward kernel for dtype ", dtype_name(dtype), ", head_dim ", head_dim,
                             ", score_mod ", score_mod_name(mod), "; built:", built));
}

// ---- checks ----------------------------------------------------------------------------------

bool wants_dbias(const BackwardArgs& args) {
  return args.dbias.defined() && args.score_mod.kind == ScoreModKind::kBias;
}

// Blocks of the dbias conversion (one thread per element of dbias).
int64_t dbias_blocks(const BackwardArgs& args) {
  const TensorRef& d = args.dbias;
  const int64_t elements = d.sizes[0] * d.sizes[1] * d.sizes[2] * d.sizes[3];
  const int64_t blocks = (elements + sm80::kConvertThreads - 1) / sm80::kConvertThreads;
  if (blocks > std::numeric_limits<int32_t>::max()) {
    throw Error(ErrorKind::kUnsupported, "dbias: " + std::to_string(elements) +
                                             " elements exceed the grid of the CUDA conversion kernel");
  }
  return blocks;
}

// ---- GQA split ---------------------------------------------------------------------------------

// Keys per CTA of the main kernel (sm80/kernel_traits_bwd.cuh: 64 at head dim 256, else 128).
int block_n(int64_t head_dim) { return head_dim == 256 ? 64 : 128; }

// Query heads per CTA: the whole GQA group (dK, dV summed in registers, K and V read once),
// unless that grid leaves SMs idle (short sequences: 2k tokens with 8 kv heads make 128 CTAs for
// 132 SMs); then the largest divisor of the group that fills the SMs, down to one head per CTA.
// The splits' fp32 dK / dV partials cost 2 x 4 bytes per element of the expanded K / V.
// Measured (H100, causal 16k, 32 / 8 heads, D 128): one head per CTA 22.2 ms, the whole group of
// 4 per CTA 21.2 ms, so splitting is for filling the machine only (bench/NOTES.md).
int choose_heads_per_cta(const BackwardArgs& args) {
  const int64_t batch = args.q.sizes[0], q_heads = args.q.sizes[1], kv_heads = args.k.sizes[1];
  const int64_t kv_len = args.k.sizes[2], head_dim = args.q.sizes[3];
  const int group = static_cast<int>(q_heads / kv_heads);
  if (group == 1) return 1;
  int sms = 0;
  FLASHFLEX_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, args.q.device.index));
  const int64_t kv_blocks = (kv_len + block_n(head_dim) - 1) / block_n(head_dim);
  for (int hpc = group; hpc > 1; --hpc) {
    if (group % hpc == 0 && kv_blocks * kv_heads * (group / hpc) * batch >= sms) return hpc;
  }
  return 1;
}

// ---- workspace -------------------------------------------------------------------------------

constexpr std::size_t kWorkspaceAlign = 256;

std::size_t align_up(std::size_t n) { return (n + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign; }

// Byte offsets of the workspace arrays (see sm80::BwdParams); absent arrays have size 0.
struct WorkspaceLayout {
  int heads_per_cta = 1, splits = 1;
  std::size_t dq_accum = 0, lse2 = 0, dpsum = 0, dkv_partial = 0, dbias_accum = 0, semaphore = 0, rank = 0;
  std::size_t dq_accum_bytes = 0, dbias_bytes = 0, semaphore_bytes = 0, rank_bytes = 0;
  std::size_t total = 0;
};

int64_t padded_q_len(int64_t q_len) { return num_tiles(q_len) * kTileSize; }

WorkspaceLayout layout_of(const BackwardArgs& args) {
  const int64_t batch = args.q.sizes[0], q_heads = args.q.sizes[1], q_len = args.q.sizes[2];
  const int64_t head_dim = args.q.sizes[3], kv_len = args.k.sizes[2];
  const int64_t rows = batch * q_heads * padded_q_len(q_len);
  WorkspaceLayout w;
  std::size_t at = 0;
  auto take = [&](std::size_t bytes) {
    const std::size_t offset = at;
    at = align_up(at + bytes);
    return offset;
  };
  w.dq_accum_bytes = static_cast<std::size_t>(rows * head_dim) * sizeof(float);
  w.dq_accum = take(w.dq_accum_bytes);
  w.lse2 = take(static_cast<std::size_t>(rows) * sizeof(float));
  w.dpsum = take(static_cast<std::size_t>(rows) * sizeof(float));
  w.heads_per_cta = choose_heads_per_cta(args);
  w.splits = static_cast<int>(q_heads / args.k.sizes[1]) / w.heads_per_cta;
  if (w.splits > 1) {
    const int64_t kv_len_pad = num_tiles(kv_len) * kTileSize;
    w.dkv_partial = take(static_cast<std::size_t>(batch * args.k.sizes[1] * w.splits * 2 * kv_len_pad * head_dim) *
                         sizeof(float));
  }
  if (wants_dbias(args)) {
    const TensorRef& bias = args.score_mod.bias;
    w.dbias_bytes = static_cast<std::size_t>(bias.sizes[0] * bias.sizes[1] * q_len * kv_len) * sizeof(float);
    w.dbias_accum = take(w.dbias_bytes);
  }
  if (args.deterministic) {
    w.semaphore_bytes = static_cast<std::size_t>(batch * q_heads * num_tiles(q_len)) * sizeof(int32_t);
    w.semaphore = take(w.semaphore_bytes);
    if (const BlockMask* m = args.block_mask) {
      w.rank_bytes = static_cast<std::size_t>(m->batch * m->heads * m->num_kv_tiles * m->num_q_tiles) * sizeof(int32_t);
      w.rank = take(w.rank_bytes);
    }
  }
  w.total = at;
  return w;
}

}  // namespace

std::size_t backward_workspace_size(const BackwardArgs& args) { return layout_of(args).total; }

void backward(const BackwardArgs& args, double scale, Workspace workspace, void* stream,
              const BackwardRowPass* row_pass) {
  const TensorRef &q = args.q, &k = args.k, &v = args.v;
  check_half_dtype("backward", q.dtype);
  const std::pair<const char*, const TensorRef*> rows[] = {{"q", &q},           {"k", &k},     {"v", &v},
                                                           {"out", &args.out},  {"dout", &args.dout},
                                                           {"dq", &args.dq},    {"dk", &args.dk}, {"dv", &args.dv}};
  for (const auto& [name, t] : rows) check_rows_aligned(name, *t);
  const BwdKernel& kernel = find_bwd_kernel(q.dtype, q.sizes[3], args.score_mod.kind);
  const bool dbias = wants_dbias(args);
  const TensorRef& bias = args.score_mod.bias;
  if (args.deterministic && dbias && (bias.sizes[0] != q.sizes[0] || bias.sizes[1] != q.sizes[1])) {
    throw Error(ErrorKind::kUnsupported, "dbias: the deterministic CUDA backward needs a bias of full batch and heads "
                                         "(its gradient is then written once per element), got sizes [" +
                                             std::to_string(bias.sizes[0]) + ", " + std::to_string(bias.sizes[1]) +
                                             ", ...]; expand the bias, or pass deterministic=False");
  }
  if (k.sizes[1] > 65535 || q.sizes[0] > 65535) {
    throw Error(ErrorKind::kUnsupported, "k: the CUDA backward needs at most 65535 kv heads and batch (grid limits), "
                                         "got " + std::to_string(k.sizes[1]) + " heads and batch " +
                                             std::to_string(q.sizes[0]));
  }
  if (dbias) dbias_blocks(args);  // checked before any work
  const WorkspaceLayout w = layout_of(args);
  if (workspace.size < w.total || (w.total > 0 && workspace.data == nullptr)) {
    throw Error(ErrorKind::kInvalidArgument, "workspace: expected at least " + std::to_string(w.total) +
                                                 " bytes (backward workspace_size), got " +
                                                 std::to_string(workspace.size));
  }
  if (reinterpret_cast<std::uintptr_t>(workspace.data) % kWorkspaceAlign != 0) {
    throw Error(ErrorKind::kInvalidArgument, "workspace: expected a 256-byte aligned pointer (CUDA allocations are)");
  }
  auto* ws = static_cast<unsigned char*>(workspace.data);

  sm80::BwdParams p;
  p.batch = static_cast<int>(q.sizes[0]);
  p.q_heads = static_cast<int>(q.sizes[1]);
  p.kv_heads = static_cast<int>(k.sizes[1]);
  p.group = p.q_heads / p.kv_heads;
  p.q_len = static_cast<int>(q.sizes[2]);
  p.kv_len = static_cast<int>(k.sizes[2]);
  p.head_dim = static_cast<int>(q.sizes[3]);
  p.q_len_pad = static_cast<int>(padded_q_len(q.sizes[2]));
  p.num_q_tiles = static_cast<int>(num_tiles(q.sizes[2]));
  p.num_kv_tiles = static_cast<int>(num_tiles(k.sizes[2]));
  p.kv_len_pad = p.num_kv_tiles * kTileSize;
  p.heads_per_cta = w.heads_per_cta;
  p.splits = w.splits;
  if (w.splits > 1) p.dkv_partial = reinterpret_cast<float*>(ws + w.dkv_partial);
  p.q = strided_view(q);
  p.k = strided_view(k);
  p.v = strided_view(v);
  p.out = strided_view(args.out);
  p.dout = strided_view(args.dout);
  p.dq = strided_view(args.dq);
  p.dk = strided_view(args.dk);
  p.dv = strided_view(args.dv);
  p.lse = static_cast<const float*>(args.lse.data);
  p.lse_stride_b = stride_of(args.lse, 0), p.lse_stride_h = stride_of(args.lse, 1);
  p.lse_stride_t = stride_of(args.lse, 2);
  if (args.dlse.defined()) {
    p.dlse = static_cast<const float*>(args.dlse.data);
    p.dlse_stride_b = stride_of(args.dlse, 0), p.dlse_stride_h = stride_of(args.dlse, 1);
    p.dlse_stride_t = stride_of(args.dlse, 2);
  }
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);  // scale * log2(e)
  p.mod = make_mod_params(args.score_mod, p.q_len, p.kv_len);
  if (args.score_mod.kind == ScoreModKind::kSoftcap) {
    p.softcap_scale = static_cast<float>(scale / args.score_mod.softcap);
    p.softcap_log2 = static_cast<float>(args.score_mod.softcap * 1.4426950408889634);  // cap * log2(e)
  }
  if (dbias) {
    p.dbias_accum = reinterpret_cast<float*>(ws + w.dbias_accum);
    p.bias_batch = static_cast<int>(bias.sizes[0]);
    p.bias_heads = static_cast<int>(bias.sizes[1]);
    p.dbias_dtype = args.dbias.dtype;
    p.dbias.data = args.dbias.data;
    p.dbias.stride_b = stride_of(args.dbias, 0);
    p.dbias.stride_h = stride_of(args.dbias, 1);
    p.dbias.stride_t = stride_of(args.dbias, 2);
    if (args.dbias.sizes[3] > 1 && args.dbias.strides[3] != 1) {
      throw Error(ErrorKind::kInternal, "dbias: expected innermost stride 1 (validated), got " +
                                            std::to_string(args.dbias.strides[3]));
    }
  }
  if (const BlockMask* m = args.block_mask) {
    p.mask.present = true;
    p.mask.batch = static_cast<int>(m->batch);
    p.mask.heads = static_cast<int>(m->heads);
    p.mask.q_num_blocks = m->q_num_blocks;
    p.mask.q_indices = m->q_indices;
    p.mask.full_q_num_blocks = m->full_q_num_blocks;
    p.mask.full_q_indices = m->full_q_indices;
    p.mask.partial_tile_ids = m->partial_tile_ids;
    p.mask.bitmaps = m->bitmaps;
  }
  p.dq_accum = reinterpret_cast<float*>(ws + w.dq_accum);
  p.lse2 = reinterpret_cast<float*>(ws + w.lse2);
  p.dpsum = reinterpret_cast<float*>(ws + w.dpsum);
  p.deterministic = args.deterministic;
  p.block_n = block_n(q.sizes[3]);
  if (row_pass != nullptr) p.rows = row_pass->row_limit();
  if (args.deterministic) {
    p.dq_semaphore = reinterpret_cast<int32_t*>(ws + w.semaphore);
    if (w.rank_bytes) p.dq_rank = reinterpret_cast<int32_t*>(ws + w.rank);
  }

  DeviceGuard guard(q.device.index);
  check_device_capability(q.device.index);
  const auto s = static_cast<cudaStream_t>(stream);
  FLASHFLEX_CUDA_CHECK(cudaMemsetAsync(p.dq_accum, 0, w.dq_accum_bytes, s));
  if (dbias) FLASHFLEX_CUDA_CHECK(cudaMemsetAsync(p.dbias_accum, 0, w.dbias_bytes, s));
  if (args.deterministic) {
    FLASHFLEX_CUDA_CHECK(cudaMemsetAsync(p.dq_semaphore, 0, w.semaphore_bytes, s));
    if (p.dq_rank != nullptr) {
      FLASHFLEX_CUDA_CHECK(cudaMemsetAsync(p.dq_rank, 0, w.rank_bytes, s));
      const dim3 mark_grid(static_cast<unsigned>(p.num_kv_tiles), static_cast<unsigned>(p.mask.batch * p.mask.heads));
      sm80::bwd_rank_mark_kernel<<<mark_grid, 128, 0, s>>>(p);
      FLASHFLEX_CUDA_CHECK(cudaGetLastError());
      const int64_t columns = static_cast<int64_t>(p.mask.batch) * p.mask.heads * p.num_q_tiles;
      sm80::bwd_rank_scan_kernel<<<static_cast<unsigned>((columns + 127) / 128), 128, 0, s>>>(p);
      FLASHFLEX_CUDA_CHECK(cudaGetLastError());
    }
  }
  kernel.pre(p, stream);
  kernel.main(p, stream);
  if (row_pass != nullptr) row_pass->run({p.dq_accum, p.lse2, p.dpsum, p.q_len_pad}, stream);
  kernel.post(p, stream);
  if (w.splits > 1) kernel.reduce(p, stream);
  if (dbias) {
    const int64_t blocks = dbias_blocks(args);
    sm80::bwd_convert_dbias_kernel<<<static_cast<unsigned>(blocks), sm80::kConvertThreads, 0, s>>>(p);
    FLASHFLEX_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace flashflex::cuda
