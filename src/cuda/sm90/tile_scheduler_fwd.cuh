// Persistent tile order of the sm_90 forward: grid = min(#SMs, tiles), over one fixed order. The
// order runs the q tiles from the last one (a causal or other lower-triangular mask gives the last
// tiles the most kv steps: longest first), and within a q tile every (batch, head) with the head
// fastest, so the q heads of one kv group run side by side and share their K/V through L2.
// Two ways to hand the order out (FwdTraits::kDynamicTiles):
//   dynamic  CTA c starts with tile c and then takes the next untaken one from a global counter
//            as it starts a tile (as FlashAttention-3's scheduler for causal masks). A static
//            assignment left the busiest CTA 21% above the average on a document mask, whose
//            costs do not fall along the order; the counter leaves 0.4% (bench/schedule_model.py,
//            bench/NOTES.md).
//   static   CTA c takes positions c, c + G, ...; odd waves run reversed (CTA c takes the wave's
//            (width - 1 - c)-th tile): with costs falling along the order, the CTA that drew the
//            dearest tile of one wave draws the cheapest of the next. Kept where the dynamic
//            one's registers do not fit (kernel_traits_fwd.cuh).
//
// The counter is one word of the caller's workspace (FwdParams::tile_counter), zeroed on the
// launch's stream before the launch (launch_fwd.cuh), so launches that run at once (streams, a
// CUDA-graph replay beside an eager call) never share one. Without a workspace the feed hands out
// the static order instead.
//
// Inside a CTA one thread of the producer warpgroup fetches each tile index, decodes it and
// publishes it through a two-slot channel in shared memory (pipeline_fwd.cuh: tile_full /
// tile_empty) to the load thread and the consumers.
#pragma once

#include <cstdint>

#include "cuda/params.hpp"
#include "cuda/ptx/mbarrier.cuh"

namespace flashflex::sm90 {

struct FwdTile {
  int m;    // q tile (rows m * 128 ..)
  int h;    // q head
  int b;    // batch
  int hkv;  // kv head
};

// Tile index -> tile, and the static assignment. The n-th tile of a CTA: static_index(n).
template <bool kDynamic>
class FwdTileScheduler {
 public:
  __device__ explicit FwdTileScheduler(const cuda::FwdParams& p)
      : bh_count_(p.batch * p.q_heads), heads_(p.q_heads), kv_group_(p.kv_group), num_q_tiles_(p.num_q_tiles),
        num_tiles_(p.num_q_tiles * p.batch * p.q_heads) {}

  __device__ bool valid(int t) const { return t < num_tiles_; }
  __device__ int static_index(int n) const {
    return static_cast<int>(blockIdx.x) + n * static_cast<int>(gridDim.x);
  }

  // The static order's position t -> tile index: odd waves reversed.
  __device__ int snake(int t) const {
    const int g = static_cast<int>(gridDim.x);
    const int wave = t / g;
    if (wave & 1) {
      const int width = min(g, num_tiles_ - wave * g);
      t = wave * g + (width - 1 - (t - wave * g));
    }
    return t;
  }

  __device__ FwdTile tile(int t) const { return decode(kDynamic ? t : snake(t)); }
  __device__ FwdTile decode(int t) const {
    const int bh = t % bh_count_;
    const int h = bh % heads_;
    return {num_q_tiles_ - 1 - t / bh_count_, h, bh / heads_, h / kv_group_};
  }

 private:
  int bh_count_, heads_, kv_group_, num_q_tiles_, num_tiles_;
};

// The channel's shared memory: two slots, each a tile index and the tile decoded, with their
// full / empty barriers (full: 1 arrival, the feed's; empty: the load thread and every consumer
// thread). Each side counts the tiles it passed (n): slot n % 2, parity (n / 2) % 2. The
// consumers read the index and decode it themselves (warp-uniform arithmetic, uniform registers);
// the load thread, short of registers, reads the decoded tile. An invalid index ends the work.
struct FwdTileChannel {
  static constexpr uint32_t kSlotBytes = 32;  // int index; 12 bytes unused; int4 {m, h, b, hkv}
  uint32_t slots;      // shared address of the two slots
  uint32_t full_bar;   // 2 barriers, 8 bytes apart
  uint32_t empty_bar;  // 2 barriers, 8 bytes apart

  // The feed thread, for its n-th tile.
  __device__ void publish(int n, int t, const FwdTile& tile) const {
    const uint32_t slot = n & 1, parity = (n >> 1) & 1;
    ptx::mbar_wait(empty_bar + 8 * slot, parity ^ 1);
    const uint32_t at = slots + kSlotBytes * slot;
    asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(at), "r"(t) : "memory");
    asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(at + 16), "r"(tile.m), "r"(tile.h),
                 "r"(tile.b), "r"(tile.hkv)
                 : "memory");
    ptx::mbar_arrive(full_bar + 8 * slot);  // release: the waiters see the stores
  }

  // The readers, for their n-th tile: wait, read, release.
  __device__ void wait(int n) const { ptx::mbar_wait(full_bar + 8 * (n & 1), (n >> 1) & 1); }
  __device__ int index(int n) const {
    int t;
    asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(t) : "r"(slots + kSlotBytes * (n & 1)) : "memory");
    return t;
  }
  __device__ FwdTile tile(int n) const {
    FwdTile t;
    asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(t.m), "=r"(t.h), "=r"(t.b), "=r"(t.hkv)
                 : "r"(slots + kSlotBytes * (n & 1) + 16)
                 : "memory");
    return t;
  }
  __device__ void release(int n) const { ptx::mbar_arrive(empty_bar + 8 * (n & 1)); }
  __device__ int receive_index(int n) const {
    wait(n);
    const int t = index(n);
    release(n);
    return t;
  }
};

// The n-th tile of this CTA, as the load thread of the dynamic order reads it (m < 0: no more),
// and the n-th tile index as a consumer sees it in either order (invalid: no more).
__device__ __forceinline__ FwdTile receive_fwd_tile(const FwdTileChannel& ch, int n) {
  ch.wait(n);
  const FwdTile tile = ch.tile(n);
  ch.release(n);
  return tile;
}
template <bool kDynamic>
__device__ __forceinline__ int consumer_tile_index(const FwdTileScheduler<kDynamic>& sched,
                                                   const FwdTileChannel& ch, int n) {
  if constexpr (kDynamic) {
    return ch.receive_index(n);
  } else {
    return sched.static_index(n);
  }
}

// The feed (kernels built for the dynamic order): its CTA index first, then fetches from the
// launch's counter, each published, the first invalid one last. The channel's depth keeps the
// fetches one tile ahead of the consumers, as a fetch when a tile starts would be. counter null
// (no workspace): the static order's indices, published the same way.
__device__ __forceinline__ void run_fwd_tile_feed(const FwdTileChannel& ch, const FwdTileScheduler<true>& sched,
                                                  unsigned* counter) {
  int t = static_cast<int>(blockIdx.x);
  for (int n = 0;; ++n) {
    const bool valid = sched.valid(t);
    const int index = valid && counter == nullptr ? sched.snake(t) : t;  // what the readers decode
    ch.publish(n, index, valid ? sched.decode(index) : FwdTile{-1, 0, 0, 0});
    if (!valid) break;
    t = counter != nullptr ? static_cast<int>(atomicAdd(counter, 1u) + gridDim.x) : sched.static_index(n + 1);
  }
}

}  // namespace flashflex::sm90
