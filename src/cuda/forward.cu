// Host side of the CUDA forward (flashflex::cuda::forward, src/cuda/launch.hpp): checks what the
// kernels need beyond src/api/validate.cpp (16-bit dtype, 16-byte aligned rows, grid size, device
// capability), fills sm80::FwdParams and dispatches through one closed table over
// (dtype, head dim, score mod) to sm80::launch_fwd (instantiated in src/cuda/sm80/fwd_*.cu).
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "api/message.hpp"
#include "cuda/launch.hpp"
#include "cuda/launch_common.hpp"
#include "cuda/sm80/launch_fwd.hpp"
#include "cuda/sm80/params_fwd.hpp"

namespace flashflex::cuda {
namespace {

using LaunchFwd = void (*)(const sm80::FwdParams&, void*);

struct FwdKernel {
  DType dtype;
  int head_dim;
  ScoreModKind mod;
  LaunchFwd launch;
};

template <DType kDType, int kHeadDim, ScoreModKind kMod>
constexpr FwdKernel fwd_kernel() {
  return {kDType, kHeadDim, kMod, &sm80::launch_fwd<kDType, kHeadDim, kMod>};
}

constexpr DType kBf16 = DType::kBFloat16;
constexpr DType kFp16 = DType::kFloat16;
constexpr ScoreModKind kNone = ScoreModKind::kNone;
constexpr ScoreModKind kSoftcap = ScoreModKind::kSoftcap;
constexpr ScoreModKind kAlibi = ScoreModKind::kAlibi;
constexpr ScoreModKind kBias = ScoreModKind::kBias;

// The compiled set: {bfloat16, float16} x head dim {64, 128, 256} x every score mod.
constexpr FwdKernel kFwdKernels[] = {
    fwd_kernel<kBf16, 64, kNone>(),  fwd_kernel<kBf16, 64, kSoftcap>(),  fwd_kernel<kBf16, 64, kAlibi>(),
    fwd_kernel<kBf16, 64, kBias>(),  fwd_kernel<kBf16, 128, kNone>(),    fwd_kernel<kBf16, 128, kSoftcap>(),
    fwd_kernel<kBf16, 128, kAlibi>(), fwd_kernel<kBf16, 128, kBias>(),   fwd_kernel<kBf16, 256, kNone>(),
    fwd_kernel<kBf16, 256, kSoftcap>(), fwd_kernel<kBf16, 256, kAlibi>(), fwd_kernel<kBf16, 256, kBias>(),
    fwd_kernel<kFp16, 64, kNone>(),  fwd_kernel<kFp16, 64, kSoftcap>(),  fwd_kernel<kFp16, 64, kAlibi>(),
    fwd_kernel<kFp16, 64, kBias>(),  fwd_kernel<kFp16, 128, kNone>(),    fwd_kernel<kFp16, 128, kSoftcap>(),
    fwd_kernel<kFp16, 128, kAlibi>(), fwd_kernel<kFp16, 128, kBias>(),   fwd_kernel<kFp16, 256, kNone>(),
    fwd_kernel<kFp16, 256, kSoftcap>(), fwd_kernel<kFp16, 256, kAlibi>(), fwd_kernel<kFp16, 256, kBias>(),
};

// The EAGLE3 variants (row_local_fwd.cuh): no score mod, every dtype and head dim.
struct FwdRowLocalKernel {
  DType dtype;
  int head_dim;
  LaunchFwd launch;
};

constexpr FwdRowLocalKernel kFwdRowLocalKernels[] = {
    {kBf16, 64, &sm80::launch_fwd_row_local<kBf16, 64>},   {kBf16, 128, &sm80::launch_fwd_row_local<kBf16, 128>},
    {kBf16, 256, &sm80::launch_fwd_row_local<kBf16, 256>}, {kFp16, 64, &sm80::launch_fwd_row_local<kFp16, 64>},
    {kFp16, 128, &sm80::launch_fwd_row_local<kFp16, 128>}, {kFp16, 256, &sm80::launch_fwd_row_local<kFp16, 256>},
};

LaunchFwd find_fwd_row_local_kernel(DType dtype, int64_t head_dim, ScoreModKind mod) {
  if (mod != ScoreModKind::kNone) {
    throw Error(ErrorKind::kUnsupported, flashflex::detail::concat("score_mod: the EAGLE3 row-local forward takes none, got ",
                                                                   score_mod_name(mod)));
  }
  for (const FwdRowLocalKernel& k : kFwdRowLocalKernels) {
    if (k.dtype == dtype && k.head_dim == head_dim) return k.launch;
  }
  throw Error(ErrorKind::kUnsupported, flashflex::detail::concat("q: no CUDA EAGLE3 forward kernel for dtype ",
                                                                 dtype_name(dtype), ", head_dim ", head_dim));
}

LaunchFwd find_fwd_kernel(DType dtype, int64_t head_dim, ScoreModKind mod) {
  for (const FwdKernel& k : kFwdKernels) {
    if (k.dtype == dtype && k.head_dim == head_dim && k.mod == mod) return k.launch;
  }
  std::string built;
  for (const FwdKernel& k : kFwdKernels) {
    built += flashflex::detail::concat(" (", dtype_name(k.dtype), ", ", k.head_dim, ", ", score_mod_name(k.mod), ")");
  }
  throw Error(ErrorKind::kUnsupported,
              flashflex::detail::concat("q: no CUDA forward kernel for dtype ", dtype_name(dtype), ", head_dim ",
                                        head_dim, ", score_mod ", score_mod_name(mod), "; built:", built));
}

}  // namespace

void forward(const ForwardArgs& args, double scale, void* stream, const sm80::RowLocalKeys* row_local) {
  const TensorRef &q = args.q, &k = args.k, &v = args.v, &out = args.out;
  check_half_dtype("forward", q.dtype);
  check_rows_aligned("q", q);
  check_rows_aligned("k", k);
  check_rows_aligned("v", v);
  check_rows_aligned("out", out);
  const LaunchFwd launch = row_local != nullptr ? find_fwd_row_local_kernel(q.dtype, q.sizes[3], args.score_mod.kind)
                                                : find_fwd_kernel(q.dtype, q.sizes[3], args.score_mod.kind);

  sm80::FwdParams p;
  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.out = out.data;
  p.lse = args.lse.defined() ? static_cast<float*>(args.lse.data) : nullptr;
  p.q_stride_b = stride_of(q, 0), p.q_stride_h = stride_of(q, 1), p.q_stride_t = stride_of(q, 2);
  p.k_stride_b = stride_of(k, 0), p.k_stride_h = stride_of(k, 1), p.k_stride_t = stride_of(k, 2);
  p.v_stride_b = stride_of(v, 0), p.v_stride_h = stride_of(v, 1), p.v_stride_t = stride_of(v, 2);
  p.out_stride_b = stride_of(out, 0), p.out_stride_h = stride_of(out, 1), p.out_stride_t = stride_of(out, 2);
  if (p.lse != nullptr) {
    p.lse_stride_b = stride_of(args.lse, 0), p.lse_stride_h = stride_of(args.lse, 1);
    p.lse_stride_t = stride_of(args.lse, 2);
  }
  // Sizes are below 2^31 (validate.cpp); launch_fwd checks the grid size.
  p.batch = static_cast<int>(q.sizes[0]);
  p.q_heads = static_cast<int>(q.sizes[1]);
  p.kv_group = static_cast<int>(q.sizes[1] / k.sizes[1]);
  p.q_len = static_cast<int>(q.sizes[2]);
  p.kv_len = static_cast<int>(k.sizes[2]);
  p.num_q_tiles = static_cast<int>(num_tiles(q.sizes[2]));
  p.num_kv_tiles = static_cast<int>(num_tiles(k.sizes[2]));
  p.scale = static_cast<float>(scale);
  if (const BlockMask* m = args.block_mask) {
    p.has_mask = true;
    p.mask_batch = static_cast<int>(m->batch);
    p.mask_heads = static_cast<int>(m->heads);
    p.kv_num_blocks = m->kv_num_blocks;
    p.kv_indices = m->kv_indices;
    p.full_kv_num_blocks = m->full_kv_num_blocks;
    p.full_kv_indices = m->full_kv_indices;
    p.partial_tile_ids = m->partial_tile_ids;
    p.bitmaps = m->bitmaps;
  }
  p.mod = make_mod_params(args.score_mod, p.q_len, p.kv_len);
  if (row_local != nullptr) p.row_local = *row_local;

  DeviceGuard guard(q.device.index);
  check_device_capability(q.device.index);
  launch(p, stream);
}

}  // namespace flashflex::cuda
