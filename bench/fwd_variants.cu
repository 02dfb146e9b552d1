// Tile-shape sweep of the sm80 forward kernel (src/cuda/sm80/kernel_fwd.cuh), outside the
// library: B=1, 32 q / 8 kv heads, D=128 and 64, bf16, dense causal (a hand-built BlockMask: diagonal
// tile partial with one shared lower-triangular bitmap, tiles below it full). Each variant is
// timed with CUDA events (warm-up, median of 20) and its output compared with the first
// variant's. Built and run on the device by tools/device_check.sh:
//   nvcc -O3 -std=c++17 -arch=sm_90 --expt-relaxed-constexpr -Iinclude -Isrc bench/fwd_variants.cu
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "cuda/sm80/kernel_fwd.cuh"

namespace ff = flashflex;
namespace sm80 = flashflex::sm80;
using bf16 = __nv_bfloat16;

__global__ void fill_random(bf16* x, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15, h *= 2246822519u, h ^= h >> 13, h *= 3266489917u, h ^= h >> 16;
    x[i] = __float2bfloat16((static_cast<float>(h & 0xffffff) / 16777216.f - 0.5f) * 3.f);
  }
}

template <class Traits>
float run_variant(const sm80::FwdParams& p, const char* name, double flops) {
  auto kernel = sm80::fwd_kernel<Traits, ff::ScoreModKind::kNone>;
  FLASHFLEX_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Traits::kSmemBytes));
  const unsigned blocks = p.num_q_tiles * Traits::kMBlocksPerTile * p.batch * p.q_heads;
  cudaEvent_t start, stop;
  FLASHFLEX_CUDA_CHECK(cudaEventCreate(&start));
  FLASHFLEX_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<float> ms;
  for (int i = 0; i < 25; ++i) {
    FLASHFLEX_CUDA_CHECK(cudaEventRecord(start));
    kernel<<<blocks, Traits::kNumThreads, Traits::kSmemBytes>>>(p);
    FLASHFLEX_CUDA_CHECK(cudaGetLastError());
    FLASHFLEX_CUDA_CHECK(cudaEventRecord(stop));
    FLASHFLEX_CUDA_CHECK(cudaEventSynchronize(stop));
    float t = 0;
    FLASHFLEX_CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
    if (i >= 5) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  const float med = ms[ms.size() / 2];
  int regs = 0;
  cudaFuncAttributes attr;
  FLASHFLEX_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  regs = attr.numRegs;
  int occupancy = 0;
  FLASHFLEX_CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occupancy, kernel, Traits::kNumThreads, Traits::kSmemBytes));
  std::printf("%-28s %8.3f ms  %6.1f TFLOP/s  (min %.3f max %.3f)  regs %d  local %zu B  CTAs/SM %d\n", name, med,
              flops / med * 1e-9, ms.front(), ms.back(), regs, attr.localSizeBytes, occupancy);
  FLASHFLEX_CUDA_CHECK(cudaEventDestroy(start));
  FLASHFLEX_CUDA_CHECK(cudaEventDestroy(stop));
  return med;
}

double max_diff(const bf16* a, const bf16* b, int64_t n) {
  std::vector<bf16> ha(n), hb(n);
  FLASHFLEX_CUDA_CHECK(cudaMemcpy(ha.data(), a, n * sizeof(bf16), cudaMemcpyDeviceToHost));
  FLASHFLEX_CUDA_CHECK(cudaMemcpy(hb.data(), b, n * sizeof(bf16), cudaMemcpyDeviceToHost));
  double worst = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double x = __bfloat162float(ha[i]), y = __bfloat162float(hb[i]);
    if (std::isnan(x) || std::isnan(y)) return INFINITY;
    worst = std::max(worst, std::abs(x - y));
  }
  return worst;
}

// Inputs, a causal mask and params for one head dim; variants then run on them.
struct Problem {
  sm80::FwdParams p;
  bf16 *out, *ref;
  int64_t nq;
  double flops;
};

Problem make_problem(int T, int D) {
  const int B = 1, HQ = 32, HKV = 8;
  const int tiles = (T + 127) / 128;
  const int64_t nq = int64_t(B) * HQ * T * D, nkv = int64_t(B) * HKV * T * D;
  bf16 *q, *k, *v, *out, *ref;
  FLASHFLEX_CUDA_CHECK(cudaMalloc(&q, nq * 2));
  FLASHFLEX_CUDA_CHECK(cudaMalloc(&k, nkv * 2));
  FLASHFLEX_CUDA_CHECK(cudaMalloc(&v, nkv * 2));
  FLASHFLEX_CUDA_CHECK(cudaMalloc(&out, nq * 2));
  FLASHFLEX_CUDA_CHECK(cudaMalloc(&ref, nq * 2));
  fill_random<<<1024, 256>>>(q, nq, 1);
  fill_random<<<1024, 256>>>(k, nkv, 2);
  fill_random<<<1024, 256>>>(v, nkv, 3);

  // Causal block mask, shared by every head: tile m has partial [m] and full [0, m).
  std::vector<int32_t> num(tiles), full_num(tiles), idx(tiles * tiles, 0), full_idx(tiles * tiles, 0),
      ids(tiles * tiles, -1);
  for (int m = 0; m < tiles; ++m) {
    num[m] = 1, full_num[m] = m, idx[m * tiles] = m, ids[m * tiles + m] = 0;
    for (int n = 0; n < m; ++n) full_idx[m * tiles + n] = n;
  }
  std::vector<uint32_t> bits(ff::kBitmapWords, 0);
  for (int r = 0; r < 128; ++r)
    for (int c = 0; c <= r; ++c) bits[r * 4 + c / 32] |= 1u << (c % 32);
  int32_t *d_num, *d_full_num, *d_idx, *d_full_idx, *d_ids;
  uint32_t* d_bits;
  auto upload = [](auto*& dst, const auto& src) {
    FLASHFLEX_CUDA_CHECK(cudaMalloc(&dst, src.size() * sizeof(src[0])));
    FLASHFLEX_CUDA_CHECK(cudaMemcpy(dst, src.data(), src.size() * sizeof(src[0]), cudaMemcpyHostToDevice));
  };
  upload(d_num, num), upload(d_full_num, full_num), upload(d_idx, idx), upload(d_full_idx, full_idx);
  upload(d_ids, ids), upload(d_bits, bits);

  sm80::FwdParams p;
  p.q = q, p.k = k, p.v = v, p.out = out, p.lse = nullptr;
  p.q_stride_h = int64_t(T) * D, p.q_stride_t = D;
  p.k_stride_h = p.v_stride_h = int64_t(T) * D, p.k_stride_t = p.v_stride_t = D;
  p.out_stride_h = int64_t(T) * D, p.out_stride_t = D;
  p.batch = B, p.q_heads = HQ, p.kv_group = HQ / HKV, p.q_len = T, p.kv_len = T;
  p.num_q_tiles = tiles, p.num_kv_tiles = tiles, p.scale = 1.f / std::sqrt(float(D));
  p.has_mask = true, p.mask_batch = 1, p.mask_heads = 1;
  p.kv_num_blocks = d_num, p.kv_indices = d_idx, p.full_kv_num_blocks = d_full_num, p.full_kv_indices = d_full_idx;
  p.partial_tile_ids = d_ids, p.bitmaps = d_bits;
  p.mod.q_len = T, p.mod.kv_len = T;
  std::printf("causal T=%d B=%d Hq=%d Hkv=%d D=%d bf16\n", T, B, HQ, HKV, D);
  return {p, out, ref, nq, 4.0 * B * HQ * D * (double(T) * (T + 1) / 2)};
}

template <class Traits>
void variant(Problem& pr, const char* name, bool is_reference = false) {
  run_variant<Traits>(pr.p, name, pr.flops);
  if (is_reference) {
    FLASHFLEX_CUDA_CHECK(cudaMemcpy(pr.ref, pr.out, pr.nq * 2, cudaMemcpyDeviceToDevice));
  } else {
    std::printf("  %-26s max |diff| vs default %.3g\n", name, max_diff(pr.out, pr.ref, pr.nq));
  }
}

int main(int argc, char** argv) {
  const int T = argc > 1 ? std::atoi(argv[1]) : 16384;
  using sm80::FwdTraits;
  {
    Problem pr = make_problem(T, 128);
    variant<sm80::FwdConfig<bf16, 128, ff::ScoreModKind::kNone>::Traits>(pr, "default (FwdConfig)", true);
    variant<FwdTraits<bf16, 128, 32, 4, 2>>(pr, "128x32 4 warps");
    variant<FwdTraits<bf16, 128, 64, 4, 2>>(pr, "128x64 4 warps (spills)");
    variant<FwdTraits<bf16, 128, 64, 8, 1, true>>(pr, "128x64 8 warps Q in regs");
    variant<FwdTraits<bf16, 128, 64, 4, 2, true, 64>>(pr, "64x64 4 warps Q in regs");
  }
  {
    Problem pr = make_problem(T, 64);
    variant<sm80::FwdConfig<bf16, 64, ff::ScoreModKind::kNone>::Traits>(pr, "default (FwdConfig)", true);
    variant<FwdTraits<bf16, 64, 128, 8, 1, true>>(pr, "128x128 8 warps Q in regs");
    variant<FwdTraits<bf16, 64, 32, 4, 2>>(pr, "128x32 4 warps");
    variant<FwdTraits<bf16, 64, 128, 4, 2, true, 64>>(pr, "64x128 4 warps Q in regs");
  }
  return 0;
}
