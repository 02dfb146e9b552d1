// Host side of the CUDA backward (launch.hpp, composition.hpp): checks what the kernels need beyond
// src/api/validate.cpp (16-bit dtype, 16-byte aligned rows, grid limits, workspace size,
// deterministic mode's limits), lays out the workspace, fills BwdParams (cuda/params.hpp) and
// plans, on the caller's stream:
//   pre    memsets (dQ accumulator, dbias accumulator, semaphores); [deterministic with a block
//          mask] dQ order of the kv tiles; preprocess: LSE2, dpsum = rowsum(dO * O) - dlse
//   main   the main kernel of the key from the table below (kernel_table.hpp; sm80/bwd_*.cu,
//          sm90/bwd_*.cu; with the automatic backend, a call the sm90 kernel cannot take, as
//          sm90::bwd_unsupported says, runs on the sm80 kernel); a linked score mod's kernel
//          (linked_kernel.hpp), of the family it was linked from
//   post   dq = dQacc * scale; dk, dv summed over the CTAs of a split GQA group; dbias
// (the passes other than main: bwd/passes.hpp). GQA: a CTA walks heads_per_cta query heads of its
// group (choose_heads_per_cta below); the group's other heads go to sibling CTAs whose fp32 dK / dV
// partials are summed in fixed order. Nothing synchronizes; every call and launch is checked.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "cuda/composition.hpp"
#include "cuda/device_info.hpp"
#include "cuda/kernel_table.hpp"
#include "cuda/launch.hpp"
#include "cuda/launch_common.hpp"
#include "cuda/linked_kernel.hpp"
#include "cuda/sm80/launch_bwd.hpp"
#if FLASHFLEX_WITH_SM90
#include "cuda/sm90/launch_bwd.hpp"
#endif

namespace flashflex::cuda {
namespace {

// ---- the kernel table ------------------------------------------------------------------------

template <DType kDType, int kHeadDim, ScoreModKind kMod>
struct Sm80BwdRow {
  static constexpr KernelEntry<LaunchBwd> entry() {
    return {{Arch::kSm80, kDType, kHeadDim, kMod, false}, &sm80::launch_bwd_main<kDType, kHeadDim, kMod>};
  }
};

#if FLASHFLEX_WITH_SM90
// The sm90 backward covers head dims 64 and 128 (sm90/kernel_traits_bwd.cuh); 256 runs on sm80.
template <DType kDType, int kHeadDim, ScoreModKind kMod>
struct Sm90BwdRow {
  static constexpr LaunchBwd launcher() {
    if constexpr (kHeadDim == 64 || kHeadDim == 128) return &sm90::launch_bwd<kDType, kHeadDim, kMod>;
    return nullptr;
  }
  static constexpr KernelEntry<LaunchBwd> entry() { return {{Arch::kSm90, kDType, kHeadDim, kMod, false}, launcher()}; }
};

constexpr auto kSm90BwdSet = make_kernel_rows<LaunchBwd, Sm90BwdRow>();
constexpr auto kBwdKernels =
    join(make_kernel_rows<LaunchBwd, Sm80BwdRow>(), built_rows<count_built(kSm90BwdSet)>(kSm90BwdSet));
#else
constexpr auto kBwdKernels = make_kernel_rows<LaunchBwd, Sm80BwdRow>();
#endif

using LaunchBwdLinked = void (*)(const BwdParams&, const void*, void*);

template <Arch kArch, DType kDType, int kHeadDim>
constexpr KernelEntry<LaunchBwdLinked> linked_row() {
#if FLASHFLEX_WITH_SM90
  if constexpr (kArch == Arch::kSm90) {
    return {{kArch, kDType, kHeadDim, ScoreModKind::kLinked, false}, &sm90::launch_bwd_linked<kDType, kHeadDim>};
  }
#endif
  return {{kArch, kDType, kHeadDim, ScoreModKind::kLinked, false}, &sm80::launch_bwd_linked<kDType, kHeadDim>};
}

// The launchers of src/cuda/linked/sm{80,90}_bwd.cu's kernels, by family, dtype and head dim (the
// sm90 backward has no head dim 256).
constexpr std::array<KernelEntry<LaunchBwdLinked>, 6> kLinkedSm80BwdKernels{
    {linked_row<Arch::kSm80, DType::kBFloat16, 64>(), linked_row<Arch::kSm80, DType::kBFloat16, 128>(),
     linked_row<Arch::kSm80, DType::kBFloat16, 256>(), linked_row<Arch::kSm80, DType::kFloat16, 64>(),
     linked_row<Arch::kSm80, DType::kFloat16, 128>(), linked_row<Arch::kSm80, DType::kFloat16, 256>()}};
#if FLASHFLEX_WITH_SM90
constexpr std::array<KernelEntry<LaunchBwdLinked>, 4> kLinkedSm90BwdKernels{
    {linked_row<Arch::kSm90, DType::kBFloat16, 64>(), linked_row<Arch::kSm90, DType::kBFloat16, 128>(),
     linked_row<Arch::kSm90, DType::kFloat16, 64>(), linked_row<Arch::kSm90, DType::kFloat16, 128>()}};
constexpr auto kLinkedBwdKernels = join(kLinkedSm80BwdKernels, kLinkedSm90BwdKernels);
#else
constexpr auto kLinkedBwdKernels = kLinkedSm80BwdKernels;
#endif

// A linked score mod's main kernel (linked_kernel.hpp): loaded for this call's pass, dtype and
// head dim; the plan launches it, on the family it was linked from, instead of a table entry.
void plan_linked(const BackwardArgs& args, Arch arch, BackwardPlan& plan) {
  const int head_dim = static_cast<int>(args.q.sizes[3]);
  const void* kernel = args.score_mod.linked_kernel;
  const Arch family = linked_kernel_arch(kernel, KernelPass::kBackward, args.q.dtype, head_dim, arch, args.backend);
  bool gather_grads = false;
  for (float* g : args.score_mod.hook_gather_grads) gather_grads = gather_grads || g != nullptr;
  if (gather_grads && args.deterministic) {
    throw Error(ErrorKind::kUnsupported, "score_mod: the gradients of a linked mod's captured tensors are added "
                                         "atomically; the deterministic backward cannot take them");
  }
#if FLASHFLEX_WITH_SM90
  if (family == Arch::kSm90) {
    if (const char* why = sm90::bwd_unsupported(plan.params)) throw Error(ErrorKind::kUnsupported, why);
  }
#endif
  const KernelKey key{family, args.q.dtype, head_dim, ScoreModKind::kLinked, false};
  plan.main_linked = find_kernel(kLinkedBwdKernels, key, "backward").launch;
  plan.linked_kernel = kernel;
}

// ---- checks ----------------------------------------------------------------------------------

bool wants_dbias(const BackwardArgs& args) {
  return args.dbias.defined() && args.score_mod.kind == ScoreModKind::kBias;
}

int64_t dbias_elements(const BackwardArgs& args) {
  const TensorRef& d = args.dbias;
  return d.sizes[0] * d.sizes[1] * d.sizes[2] * d.sizes[3];
}

// ---- GQA split ---------------------------------------------------------------------------------
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
  const int sms = device_info(args.q.device.index).sm_count;
  const int block_n = sm80::bwd_block_n(static_cast<int>(head_dim));
  const int64_t kv_blocks = (kv_len + block_n - 1) / block_n;
  for (int hpc = group; hpc > 1; --hpc) {
    if (group % hpc == 0 && kv_blocks * kv_heads * (group / hpc) * batch >= sms) return hpc;
  }
  return 1;
}

// ---- workspace -------------------------------------------------------------------------------

constexpr std::size_t kWorkspaceAlign = 256;

std::size_t align_up(std::size_t n) { return (n + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign; }

// Byte offsets of the workspace arrays (see BwdParams, cuda/params.hpp); absent arrays have size 0.
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

BackwardPlan plan_backward(const BackwardArgs& args, double scale, Workspace workspace, const RowLimit& rows) {
  const TensorRef &q = args.q, &k = args.k, &v = args.v;
  check_half_dtype("backward", q.dtype);
  const std::pair<const char*, const TensorRef*> views[] = {{"q", &q},           {"k", &k},     {"v", &v},
                                                            {"out", &args.out},  {"dout", &args.dout},
                                                            {"dq", &args.dq},    {"dk", &args.dk}, {"dv", &args.dv}};
  for (const auto& [name, t] : views) check_rows_aligned(name, *t);
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
  if (dbias) bwd::dbias_convert_blocks(dbias_elements(args));  // checked before any work
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

  BackwardPlan plan;
  BwdParams& p = plan.params;
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
  p.lse = lse_view(args.lse);
  p.dlse = lse_view(args.dlse);
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * kLog2eDouble);
  p.mod = make_mod_params(args.score_mod, p.q_len, p.kv_len, scale);
  if (dbias) {
    p.dbias_accum = reinterpret_cast<float*>(ws + w.dbias_accum);
    p.bias_batch = static_cast<int>(bias.sizes[0]);
    p.bias_heads = static_cast<int>(bias.sizes[1]);
    p.dbias_dtype = args.dbias.dtype;
    p.dbias = strided_view(args.dbias);
    if (args.dbias.sizes[3] > 1 && args.dbias.strides[3] != 1) {
      throw Error(ErrorKind::kInternal, "dbias: expected innermost stride 1 (validated), got " +
                                            std::to_string(args.dbias.strides[3]));
    }
    plan.dbias_elements = dbias_elements(args);
  }
  p.mask = block_mask_view(args.block_mask);
  p.dq_accum = reinterpret_cast<float*>(ws + w.dq_accum);
  p.lse2 = reinterpret_cast<float*>(ws + w.lse2);
  p.dpsum = reinterpret_cast<float*>(ws + w.dpsum);
  p.deterministic = args.deterministic;
  p.block_n = sm80::bwd_block_n(p.head_dim);
  p.rows = rows;
  if (args.deterministic) {
    p.dq_semaphore = reinterpret_cast<int32_t*>(ws + w.semaphore);
    if (w.rank_bytes) p.dq_rank = reinterpret_cast<int32_t*>(ws + w.rank);
  }
  plan.dq_accum_bytes = w.dq_accum_bytes;
  plan.dbias_bytes = w.dbias_bytes;
  plan.semaphore_bytes = w.semaphore_bytes;
  plan.rank_bytes = w.rank_bytes;

  // Device attributes are read by index: the launches' device guard is the caller's (run_*).
  const Arch arch = select_arch(q.device.index, args.backend);
  plan.passes = &bwd::find_passes(q.dtype, p.head_dim);
  if (args.score_mod.kind == ScoreModKind::kLinked) {
    plan_linked(args, arch, plan);
    return plan;
  }
  KernelKey key{arch, q.dtype, p.head_dim, args.score_mod.kind, false};
  const KernelEntry<LaunchBwd>* kernel = &select_kernel(kBwdKernels, key, arch, args.backend, "backward");
#if FLASHFLEX_WITH_SM90
  if (kernel->key.arch == Arch::kSm90) {
    if (const char* why = sm90::bwd_unsupported(p)) {  // the automatic backend takes the sm80 kernel
      if (args.backend != Backend::kAuto) throw Error(ErrorKind::kUnsupported, why);
      key.arch = Arch::kSm80;
      kernel = &find_kernel(kBwdKernels, key, "backward");
    }
  }
#endif
  plan.main = kernel->launch;
  return plan;
}

void run_backward_pre(const BackwardPlan& plan, void* stream) {
  const BwdParams& p = plan.params;
  const auto s = static_cast<cudaStream_t>(stream);
  FLASHFLEX_CUDA_CHECK(cudaMemsetAsync(p.dq_accum, 0, plan.dq_accum_bytes, s));
  if (plan.dbias_elements > 0) FLASHFLEX_CUDA_CHECK(cudaMemsetAsync(p.dbias_accum, 0, plan.dbias_bytes, s));
  if (p.deterministic) {
    FLASHFLEX_CUDA_CHECK(cudaMemsetAsync(p.dq_semaphore, 0, plan.semaphore_bytes, s));
    if (p.dq_rank != nullptr) {
      FLASHFLEX_CUDA_CHECK(cudaMemsetAsync(p.dq_rank, 0, plan.rank_bytes, s));
      bwd::launch_dq_order(p, stream);
    }
  }
  plan.passes->preprocess(p, stream);
}

void run_backward_main(const BackwardPlan& plan, void* stream) {
  if (plan.main_linked != nullptr) return plan.main_linked(plan.params, plan.linked_kernel, stream);
  plan.main(plan.params, stream);
}

void run_backward_post(const BackwardPlan& plan, void* stream) {
  const BwdParams& p = plan.params;
  plan.passes->convert_dq(p, stream);
  if (p.splits > 1) plan.passes->reduce_dkv(p, stream);
  if (plan.dbias_elements > 0) bwd::launch_convert_dbias(p, plan.dbias_elements, stream);
}

void backward(const BackwardArgs& args, double scale, Workspace workspace, void* stream) {
  const BackwardPlan plan = plan_backward(args, scale, workspace);
  DeviceGuard guard(args.q.device.index);
  run_backward_pre(plan, stream);
  run_backward_main(plan, stream);
  run_backward_post(plan, stream);
}

}  // namespace flashflex::cuda
