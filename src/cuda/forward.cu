// Host side of the CUDA forward (launch.hpp, composition.hpp): checks what the kernels need beyond
// src/api/validate.cpp (16-bit dtype, 16-byte aligned rows), fills FwdParams (cuda/params.hpp),
// picks the architecture (device_info.hpp) and launches the kernel of the key from the table
// below (kernel_table.hpp); the kernels are instantiated in sm80/fwd_*.cu and sm90/fwd_*.cu.
// With the automatic backend, a call the sm90 kernel cannot take (a layout TMA cannot address:
// Error kUnsupported before any launch) runs on the sm80 kernel. A linked score mod runs on the
// kernel its handle names (launch_linked), of the family it was linked from.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "api/message.hpp"

#include "cuda/composition.hpp"
#include "cuda/device_info.hpp"
#include "cuda/kernel_table.hpp"
#include "cuda/launch.hpp"
#include "cuda/launch_common.hpp"
#include "cuda/linked_kernel.hpp"
#include "cuda/sm80/launch_fwd.hpp"
#if FLASHFLEX_WITH_SM90
#include "cuda/sm90/launch_fwd.hpp"
#endif

namespace flashflex::cuda {
namespace {

using LaunchFwd = void (*)(const FwdParams&, void*);

// The launcher of one key: the architecture folder's launch_fwd.
template <Arch kArch, DType kDType, int kHeadDim, ScoreModKind kMod, bool kRowLocal>
constexpr LaunchFwd launcher() {
#if FLASHFLEX_WITH_SM90
  if constexpr (kArch == Arch::kSm90) return &sm90::launch_fwd<kDType, kHeadDim, kMod, kRowLocal>;
#endif
  return &sm80::launch_fwd<kDType, kHeadDim, kMod, kRowLocal>;
}

// The rows of one architecture and variant. The EAGLE3 variant exists without a score mod only:
// the rows of the other mods repeat it.
template <Arch kArch, bool kRowLocal>
struct FwdRows {
  template <DType kDType, int kHeadDim, ScoreModKind kMod>
  struct Row {
    static constexpr ScoreModKind kKind = kRowLocal ? ScoreModKind::kNone : kMod;
    static constexpr KernelEntry<LaunchFwd> entry() {
      return {{kArch, kDType, kHeadDim, kKind, kRowLocal}, launcher<kArch, kDType, kHeadDim, kKind, kRowLocal>()};
    }
  };
};

template <Arch kArch>
constexpr auto arch_rows() {
  return join(make_kernel_rows<LaunchFwd, FwdRows<kArch, false>::template Row>(),
              make_kernel_rows<LaunchFwd, FwdRows<kArch, true>::template Row>());
}

#if FLASHFLEX_WITH_SM90
constexpr auto kFwdKernels = join(arch_rows<Arch::kSm80>(), arch_rows<Arch::kSm90>());
#else
constexpr auto kFwdKernels = arch_rows<Arch::kSm80>();
#endif

using LaunchFwdLinked = void (*)(const FwdParams&, const void*, void*);

template <Arch kArch, DType kDType, int kHeadDim>
constexpr KernelEntry<LaunchFwdLinked> linked_row() {
#if FLASHFLEX_WITH_SM90
  if constexpr (kArch == Arch::kSm90) {
    return {{kArch, kDType, kHeadDim, ScoreModKind::kLinked, false}, &sm90::launch_fwd_linked<kDType, kHeadDim>};
  }
#endif
  return {{kArch, kDType, kHeadDim, ScoreModKind::kLinked, false}, &sm80::launch_fwd_linked<kDType, kHeadDim>};
}

template <Arch kArch>
constexpr std::array<KernelEntry<LaunchFwdLinked>, 6> linked_rows() {
  return {{linked_row<kArch, DType::kBFloat16, 64>(), linked_row<kArch, DType::kBFloat16, 128>(),
           linked_row<kArch, DType::kBFloat16, 256>(), linked_row<kArch, DType::kFloat16, 64>(),
           linked_row<kArch, DType::kFloat16, 128>(), linked_row<kArch, DType::kFloat16, 256>()}};
}

// The launchers of src/cuda/linked/sm{80,90}_fwd.cu's kernels, by family, dtype and head dim.
#if FLASHFLEX_WITH_SM90
constexpr auto kLinkedFwdKernels = join(linked_rows<Arch::kSm80>(), linked_rows<Arch::kSm90>());
#else
constexpr auto kLinkedFwdKernels = linked_rows<Arch::kSm80>();
#endif

// A linked score mod (linked_kernel.hpp): its kernel must have been loaded for this call's
// pass, dtype and head dim, and runs on the family it was linked from.
void launch_linked(const ForwardArgs& args, const FwdParams& p, Arch arch, void* stream) {
  const int head_dim = static_cast<int>(args.q.sizes[3]);
  const void* kernel = args.score_mod.linked_kernel;
  const Arch family = linked_kernel_arch(kernel, KernelPass::kForward, args.q.dtype, head_dim, arch, args.backend);
  const KernelKey key{family, args.q.dtype, head_dim, ScoreModKind::kLinked, false};
  find_kernel(kLinkedFwdKernels, key, "forward").launch(p, kernel, stream);
}

// The workspace's tile counter (launch.hpp): null for an empty workspace.
unsigned* tile_counter(const Workspace& workspace) {
  if (workspace.data == nullptr && workspace.size == 0) return nullptr;
  if (workspace.data == nullptr || workspace.size < forward_workspace_size()) {
    throw Error(ErrorKind::kInvalidArgument,
                flashflex::detail::concat("workspace: expected at least ", forward_workspace_size(),
                                          " bytes on the tensors' device (workspace_size), got ", workspace.size,
                                          workspace.data == nullptr ? " at a null pointer" : ""));
  }
  if (reinterpret_cast<std::uintptr_t>(workspace.data) % 16 != 0) {
    throw Error(ErrorKind::kInvalidArgument, "workspace: expected a 16-byte aligned pointer (CUDA allocations are)");
  }
  return static_cast<unsigned*>(workspace.data);
}

}  // namespace

void forward(const ForwardArgs& args, double scale, Workspace workspace, void* stream) {
  forward(args, scale, workspace, stream, nullptr);
}

void forward(const ForwardArgs& args, double scale, Workspace workspace, void* stream, const RowLocalKeys* row_local) {
  const TensorRef &q = args.q, &k = args.k, &v = args.v, &out = args.out;
  check_half_dtype("forward", q.dtype);
  check_rows_aligned("q", q);
  check_rows_aligned("k", k);
  check_rows_aligned("v", v);
  check_rows_aligned("out", out);
  if (row_local != nullptr && args.score_mod.kind != ScoreModKind::kNone) {
    throw Error(ErrorKind::kUnsupported, flashflex::detail::concat("score_mod: the EAGLE3 row-local forward takes none, got ",
                                                                   score_mod_name(args.score_mod.kind)));
  }

  FwdParams p;
  p.q = strided_view(q);
  p.k = strided_view(k);
  p.v = strided_view(v);
  p.out = strided_view(out);
  p.lse = lse_view(args.lse);
  // Sizes are below 2^31 (validate.cpp); the launchers check their grids.
  p.batch = static_cast<int>(q.sizes[0]);
  p.q_heads = static_cast<int>(q.sizes[1]);
  p.kv_group = static_cast<int>(q.sizes[1] / k.sizes[1]);
  p.q_len = static_cast<int>(q.sizes[2]);
  p.kv_len = static_cast<int>(k.sizes[2]);
  p.num_q_tiles = static_cast<int>(num_tiles(q.sizes[2]));
  p.num_kv_tiles = static_cast<int>(num_tiles(k.sizes[2]));
  p.scale = static_cast<float>(scale);
  p.mask = block_mask_view(args.block_mask);
  p.mod = make_mod_params(args.score_mod, p.q_len, p.kv_len, scale);
  if (row_local != nullptr) p.row_local = *row_local;
  p.tile_counter = tile_counter(workspace);

  DeviceGuard guard(q.device.index);
  const Arch arch = select_arch(q.device.index, args.backend);
  if (args.score_mod.kind == ScoreModKind::kLinked) return launch_linked(args, p, arch, stream);
  KernelKey key{arch, q.dtype, static_cast<int>(q.sizes[3]), args.score_mod.kind, row_local != nullptr};
  const KernelEntry<LaunchFwd>& kernel = select_kernel(kFwdKernels, key, arch, args.backend, "forward");
  if (kernel.key.arch == Arch::kSm80 || args.backend != Backend::kAuto) return kernel.launch(p, stream);
  try {
    kernel.launch(p, stream);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kUnsupported) throw;
    key.arch = Arch::kSm80;
    find_kernel(kFwdKernels, key, "forward").launch(p, stream);
  }
}

}  // namespace flashflex::cuda
