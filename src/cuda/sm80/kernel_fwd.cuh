// The sm80 forward kernel (FlashAttention-2 scheme, mma.sync) and its launcher. One CTA per
// (kBlockM rows of q, q head, batch); heaviest q blocks first (a causal mask gives the last tiles
// the most kv steps). Per CTA:
//   cursor  block_iter_fwd.cuh   the kv steps: partial tiles (bitmap), then full tiles
//   loads   mainloop_fwd.cuh     Q once; K, V of step i+1 into the other stage while step i computes
//   S       mainloop_fwd.cuh     gemm_qk
//   mask    mask_fwd.cuh         score mod (ScoreModOp, src/cuda/score_mod.cuh), bitmap, KV_LEN bound
//   softmax softmax.cuh          online softmax, O rescale
//   O       mainloop_fwd.cuh     gemm_pv with P in registers
//   store   epilogue_fwd.cuh     out, lse
// The kRowLocal variant (EAGLE3, row_local.hpp) skips CTAs whose rows are all past the sample's
// valid length and folds the row-local keys into the softmax after the loop (row_local_fwd.cuh).
// Pipeline: one group of cp.async per step (K and V together), two stages, one CTA barrier per
// step: wait(step i) ; barrier (data of i visible to all; everyone is past step i-1, so its stage
// is free) ; issue step i+1 into that stage ; compute step i.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <limits>
#include <string>

#include "cuda/cuda_check.hpp"
#include "cuda/score_mod.cuh"
#include "cuda/sm80/block_iter_fwd.cuh"
#include "cuda/sm80/epilogue_fwd.cuh"
#include "cuda/sm80/kernel_traits_fwd.cuh"
#include "cuda/sm80/launch_fwd.hpp"
#include "cuda/sm80/mainloop_fwd.cuh"
#include "cuda/sm80/mask_fwd.cuh"
#include "cuda/sm80/params_fwd.hpp"
#include "cuda/sm80/row_local_fwd.cuh"
#include "cuda/sm80/softmax.cuh"

namespace flashflex::sm80 {

template <class Traits, ScoreModKind kMod, bool kRowLocal>
__global__ void __launch_bounds__(Traits::kNumThreads, Traits::kMinBlocksPerSm)
    fwd_kernel(const __grid_constant__ FwdParams p) {
  static_assert(!kRowLocal || kMod == ScoreModKind::kNone, "the row-local keys take no score mod");
  using Element = typename Traits::Element;
  using Mainloop = MainloopFwd<Traits>;
  using Mask = MaskFwd<Traits>;
  using Mod = cuda::ScoreModOp<kMod>;
  constexpr int kMSlabs = Traits::kMSlabs;

  // 1 KiB alignment: the xor addressing of mainloop_fwd.cuh needs tiles aligned to a row group.
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  Element* sK = reinterpret_cast<Element*>(smem_raw) + Traits::kQOwnElems;  // [kStages][kBlockN, D]
  // [kBlockM, D]: its own region, or K's stage 1 (kQAliasesK, kernel_traits_fwd.cuh).
  Element* sQ = Traits::kQAliasesK ? sK + Traits::kKVElems : reinterpret_cast<Element*>(smem_raw);
  Element* sV = sK + Traits::kStages * Traits::kKVElems;     // [kStages][kBlockN, D]
  uint32_t* sBits = reinterpret_cast<uint32_t*>(sV + Traits::kStages * Traits::kKVElems);  // [kStages][kBitsWords]
  if (ptx::smem_addr(smem_raw) % 1024 != 0) __trap();  // broken invariant of the xor addressing

  // Block -> (q block, head h, batch b): heads and samples fastest, q blocks from the last one.
  // q block mb covers rows [mb * kBlockM, +kBlockM) of mask tile m = mb / kMBlocksPerTile.
  const int bh_count = p.batch * p.q_heads;
  const int bh = blockIdx.x % bh_count;
  const int mb = p.num_q_tiles * Traits::kMBlocksPerTile - 1 - static_cast<int>(blockIdx.x / bh_count);
  const int m = mb / Traits::kMBlocksPerTile;
  const int bitmap_row = (mb % Traits::kMBlocksPerTile) * Traits::kBlockM;  // first row inside tile m
  const int b = bh / p.q_heads;
  const int h = bh % p.q_heads;
  const int hkv = h / p.kv_group;
  const int q_row0 = mb * Traits::kBlockM;

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;

  const Element* q = static_cast<const Element*>(p.q) + b * p.q_stride_b + h * p.q_stride_h;
  const Element* k = static_cast<const Element*>(p.k) + b * p.k_stride_b + hkv * p.k_stride_h;
  const Element* v = static_cast<const Element*>(p.v) + b * p.v_stride_b + hkv * p.v_stride_h;

  const Mod mod(p.mod, b, h);
  // Units of the running max (softmax.cuh): raw q.k without a mod, modified scores with one.
  const float unit = Mod::kIsIdentity ? p.scale : 1.f;
  const float sl2 = unit * cuda::kLog2e;

  float acc_o[kMSlabs][Traits::kNTilesO][4];
#pragma unroll
  for (int s = 0; s < kMSlabs; ++s)
#pragma unroll
    for (int t = 0; t < Traits::kNTilesO; ++t)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_o[s][t][e] = 0.f;
  OnlineSoftmax<kMSlabs, Traits::kNTilesS> softmax;
  softmax.init();

  const int valid_rows = kRowLocal ? p.row_local.limit.valid_rows(b, p.q_len) : p.q_len;
  KvStepCursor<Traits> cursor(p, b, h, m);
  if (cursor.valid() && q_row0 < valid_rows) {
    // Issues the loads of step `st` into stage `stage` (K, V and, for a partial step, its bits).
    auto load_step = [&](const KvStep& st, int stage) {
      const int off = stage * Traits::kKVElems;
      Mainloop::template load_rows<Traits::kBlockN>(sK + off, k, p.k_stride_t, st.kv_start, p.kv_len, tid);
      Mainloop::template load_rows<Traits::kBlockN>(sV + off, v, p.v_stride_t, st.kv_start, p.kv_len, tid);
      if (st.bitmap_id >= 0) {
        const uint32_t* bitmap = p.bitmaps + static_cast<int64_t>(st.bitmap_id) * kBitmapWords;
        Mask::load_bits(sBits + stage * Traits::kBitsWords, bitmap, bitmap_row, st.kv_start % kTileSize, tid);
      }
    };
    const uint32_t q_addr = Mainloop::q_base(sQ, warp, lane);
    const uint32_t k_addr = Mainloop::k_base(sK, lane);
    const uint32_t v_addr = Mainloop::v_base(sV, lane);
    constexpr uint32_t kKVBytes = Traits::kKVElems * sizeof(Element);
    KvStep cur = cursor.step();
    Mainloop::template load_rows<Traits::kBlockM>(sQ, q, p.q_stride_t, q_row0, p.q_len, tid);
    ptx::cp_async_commit();
    load_step(cur, 0);
    ptx::cp_async_commit();
    // Q fragments in registers (kQInRegs): wait for Q alone; each warp reads only its own rows.
    uint32_t q_frags[kMSlabs][Traits::kQInRegs ? Mainloop::kKSteps : 1][4];
    if constexpr (Traits::kQInRegs) {
      ptx::cp_async_wait<1>();
      __syncthreads();
      Mainloop::load_q_frags(q_frags, q_addr);
    }

    for (int stage = 0;; stage ^= 1) {
      ptx::cp_async_wait<0>();
      __syncthreads();  // step `cur` visible to all; everyone is past the step that used stage ^ 1
      cursor.advance();
      const bool has_next = cursor.valid();
      KvStep next = cur;
      if (has_next) {
        next = cursor.step();
        load_step(next, stage ^ 1);
      }
      ptx::cp_async_commit();

      float acc_s[kMSlabs][Traits::kNTilesS][4];
      if constexpr (Traits::kQInRegs) {
        Mainloop::gemm_qk(acc_s, q_frags, k_addr + stage * kKVBytes);
      } else {
        Mainloop::gemm_qk(acc_s, q_addr, k_addr + stage * kKVBytes);
      }
      if constexpr (!Mod::kIsIdentity) {
        Mask::apply_score_mod(acc_s, mod, p.scale, q_row0 + warp * Traits::kRowsPerWarp, cur.kv_start, lane);
      }
      if (cur.bitmap_id >= 0) Mask::mask_bitmap(acc_s, sBits + stage * Traits::kBitsWords, warp, lane);
      if (cur.kv_start + Traits::kBlockN > p.kv_len) Mask::mask_kv_bound(acc_s, cur.kv_start, p.kv_len, lane);
      softmax.update(acc_s, acc_o, sl2);
      Mainloop::gemm_pv(acc_o, acc_s, v_addr + stage * kKVBytes);

      if (!has_next) break;
      cur = next;
    }
  }

  if constexpr (kRowLocal) {
    RowLocalFwd<Traits>::fold(softmax, acc_o, p, b, h, hkv, q_row0, warp * Traits::kRowsPerWarp, valid_rows, sl2,
                              lane);
  }
  float inv[kMSlabs][2], lse[kMSlabs][2];
  softmax.finish(inv, lse, unit);
  // O is staged in sQ: when that is K's stage 1, other warps may still read it in their last step.
  if constexpr (Traits::kQAliasesK) __syncthreads();
  Element* out = static_cast<Element*>(p.out) + b * p.out_stride_b + h * p.out_stride_h;
  float* lse_rows = p.lse != nullptr ? p.lse + b * p.lse_stride_b + h * p.lse_stride_h : nullptr;
  EpilogueFwd<Traits>::store(acc_o, inv, lse, sQ, out, p.out_stride_t, lse_rows, p.lse_stride_t, q_row0, p.q_len,
                             warp, lane);
}

namespace detail {

template <DType kDType>
struct ElementOf;
template <>
struct ElementOf<DType::kBFloat16> {
  using type = __nv_bfloat16;
};
template <>
struct ElementOf<DType::kFloat16> {
  using type = __half;
};

// Raises the kernel's dynamic shared-memory limit once per device (bit d of `done`).
template <class Kernel>
void set_smem_limit_once(Kernel kernel, int bytes, int device, std::atomic<uint64_t>& done) {
  const uint64_t bit = device < 64 ? (uint64_t{1} << device) : 0;
  if (bit != 0 && (done.load(std::memory_order_acquire) & bit)) return;
  FLASHFLEX_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  done.fetch_or(bit, std::memory_order_acq_rel);
}

}  // namespace detail

template <DType kDType, int kHeadDim, ScoreModKind kMod, bool kRowLocal>
void launch_fwd_kernel(const FwdParams& params, void* stream) {
  using Traits = typename FwdConfig<typename detail::ElementOf<kDType>::type, kHeadDim, kMod>::Traits;
  constexpr int kSmem = Traits::kSmemBytes;
  auto kernel = fwd_kernel<Traits, kMod, kRowLocal>;

  int device = 0;
  FLASHFLEX_CUDA_CHECK(cudaGetDevice(&device));
  int smem_optin = 0;
  FLASHFLEX_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (kSmem > smem_optin) {
    throw Error(ErrorKind::kUnsupported, "q: the CUDA forward for head_dim " + std::to_string(kHeadDim) + " needs " +
                                             std::to_string(kSmem) + " bytes of shared memory per block, device " +
                                             std::to_string(device) + " allows " + std::to_string(smem_optin));
  }
  static std::atomic<uint64_t> smem_configured{0};
  detail::set_smem_limit_once(kernel, kSmem, device, smem_configured);

  const int64_t blocks =
      static_cast<int64_t>(params.num_q_tiles) * Traits::kMBlocksPerTile * params.batch * params.q_heads;
  if (blocks > std::numeric_limits<int32_t>::max()) {
    throw Error(ErrorKind::kUnsupported, "q: the CUDA forward needs batch * heads * ceil(q_len / " +
                                             std::to_string(Traits::kBlockM) + ") < 2^31 CTAs, got " +
                                             std::to_string(blocks));
  }
  kernel<<<static_cast<unsigned>(blocks), Traits::kNumThreads, kSmem, static_cast<cudaStream_t>(stream)>>>(params);
  FLASHFLEX_CUDA_CHECK(cudaGetLastError());
}

template <DType kDType, int kHeadDim, ScoreModKind kMod>
void launch_fwd(const FwdParams& params, void* stream) {
  launch_fwd_kernel<kDType, kHeadDim, kMod, false>(params, stream);
}

template <DType kDType, int kHeadDim>
void launch_fwd_row_local(const FwdParams& params, void* stream) {
  launch_fwd_kernel<kDType, kHeadDim, ScoreModKind::kNone, true>(params, stream);
}

}  // namespace flashflex::sm80
