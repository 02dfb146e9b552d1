// The q-direction walk of one backward CTA (mainloop_bwd.cuh): for each of its query heads
// (heads_per_cta heads of the GQA group, from head0), the q tiles of the CTA's kv tile in
// ascending order, merged from the partial list (q_num_blocks / q_indices: masked with the tile's
// bitmap) and the full list (full_q_*: no mask work except sequence bounds on ragged tiles);
// without a block mask every q tile is full. Each 128-row q tile is cut into 128 / kBlockM
// sub-tiles; sub-tiles starting at or past Q_LEN are skipped.
// Ascending q tiles matter for deterministic mode: the CTAs that add into one q tile of dQ take
// turns in descending kv order, so every CTA walking upwards keeps the turns a wavefront.
// One thread advances the walk; its state and the steps live in shared memory (no register is
// held for them across the GEMMs). The next entry of the list a tile was taken from is fetched
// with cp.async, completing with the step's own loads: the walk never waits on global memory
// except when it opens a head's lists.
#pragma once

#include <cstdint>

#include "cuda/ptx/cp_async.cuh"
#include "cuda/sm80/params_bwd.hpp"
#include "flashflex/block_mask.hpp"

namespace flashflex::sm80 {

// One step of the walk: q rows [m0, m0 + kBlockM) of query head `hq`.
struct BwdStep {
  int valid;     // 0: the walk is over
  int partial;   // 1: a partial tile (bitmap), 0: full
  int hq;
  int q_tile;    // 128-row mask tile
  int m0;        // first q row
  int mask_bh;   // (batch, head) index into the block mask's arrays
};

struct QWalkState {
  const int32_t* list[2];  // 0 partial, 1 full (null: no block mask, the q tiles in order)
  int count[2];
  int index[2];            // next entry of each list
  int next_entry[2];       // list[s][index[s]] when index[s] < count[s] (filled by cp.async)
  int started;
  int head0;  // first query head of the CTA
  int head;   // 0 .. heads_per_cta - 1 (query head head0 + head)
  int tile;
  int sub;
  int partial;
  int mask_bh;
};

template <int kBlockM>
struct QWalk {
  static constexpr int kSubTiles = kTileSize / kBlockM;

  // Starts a walk over query heads head0 .. head0 + heads_per_cta - 1.
  __device__ static void start(QWalkState& w, int head0) {
    w.started = 0;
    w.head0 = head0;
  }

  // Advances `w` and writes the next step into `s` (s.valid = 0 when the walk is over; call it
  // no more after that). Entries fetched by the previous call must have landed (cp.async wait).
  __device__ static void next(QWalkState& w, const BwdParams& p, int b, int kv_tile, BwdStep& s) {
    if (w.started) {
      ++w.sub;
      if (w.sub < kSubTiles && w.tile * kTileSize + w.sub * kBlockM < p.q_len) return fill(w, s);
      w.sub = 0;
    } else {
      const int head0 = w.head0;
      w = QWalkState{};
      w.started = 1;
      w.head0 = head0;
      open_lists(w, p, b, kv_tile);
    }
    for (;;) {
      const bool has_partial = w.index[0] < w.count[0], has_full = w.index[1] < w.count[1];
      if (has_partial || has_full) {
        const int side = has_partial && (!has_full || w.next_entry[0] < w.next_entry[1]) ? 0 : 1;
        w.tile = w.list[side] != nullptr ? w.next_entry[side] : w.index[side];
        w.partial = side == 0;
        const int i = ++w.index[side];
        if (w.list[side] != nullptr && i < w.count[side]) {
          ptx::cp_async_4(ptx::smem_addr(&w.next_entry[side]), w.list[side] + i, true);
        }
        return fill(w, s);
      }
      if (++w.head >= p.heads_per_cta) {
        s.valid = 0;
        return;
      }
      open_lists(w, p, b, kv_tile);
    }
  }

 private:
  // Opens both lists of head `head` (blocking loads: once per head).
  __device__ static void open_lists(QWalkState& w, const BwdParams& p, int b, int kv_tile) {
    const BwdMask& m = p.mask;
    w.index[0] = w.index[1] = 0;
    if (!m.present) {
      w.list[0] = w.list[1] = nullptr;
      w.count[0] = 0;
      w.count[1] = p.num_q_tiles;
      return;
    }
    const int hq = w.head0 + w.head;
    w.mask_bh = (m.batch == 1 ? 0 : b) * m.heads + (m.heads == 1 ? 0 : hq);
    const int64_t row = static_cast<int64_t>(w.mask_bh) * p.num_kv_tiles + kv_tile;
    w.list[0] = m.q_indices + row * p.num_q_tiles;
    w.list[1] = m.full_q_indices + row * p.num_q_tiles;
    w.count[0] = __ldg(m.q_num_blocks + row);
    w.count[1] = __ldg(m.full_q_num_blocks + row);
    for (int side = 0; side < 2; ++side) w.next_entry[side] = w.count[side] > 0 ? __ldg(w.list[side]) : 0;
  }

  __device__ static void fill(const QWalkState& w, BwdStep& s) {
    s.valid = 1;
    s.partial = w.partial;
    s.hq = w.head0 + w.head;
    s.q_tile = w.tile;
    s.m0 = w.tile * kTileSize + w.sub * kBlockM;
    s.mask_bh = w.mask_bh;
  }
};

}  // namespace flashflex::sm80
