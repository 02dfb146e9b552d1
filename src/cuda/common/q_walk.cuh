// The q-direction walk of one backward CTA (the main kernels): for each of its query heads
// (heads_per_cta heads of the GQA group, from head0), the q tiles of the CTA's kv tile in
// ascending order, merged from the partial list (q_num_blocks / q_indices: masked with the tile's
// bitmap) and the full list (full_q_*: no mask work except sequence bounds on ragged tiles);
// without a block mask every q tile is full. Each 128-row q tile is cut into 128 / kBlockM
// sub-tiles; sub-tiles starting at or past Q_LEN, or past the sample's row limit (BwdParams::rows),
// are skipped.
// Ascending q tiles matter for deterministic mode: the CTAs that add into one q tile of dQ take
// turns in descending kv order, so every CTA walking upwards keeps the turns a wavefront.
// One thread advances the walk; its state and the steps live in shared memory (no register is
// held for them across the GEMMs). A call works on a register copy of the state (a few wide
// shared loads, then stores), not field by field in shared memory: the walk runs on the critical
// path of its warp, and a chain of dependent shared loads and stores costs ~30 cycles a link.
// The next entry of the list a tile was taken from is fetched with cp.async, completing with the
// step's own loads: the walk never waits on global memory except when it opens a head's lists.
#pragma once

#include <cstdint>

#include "cuda/ptx/cp_async.cuh"
#include "cuda/params.hpp"
#include "flashflex/block_mask.hpp"

namespace flashflex::cuda {

// One step of the walk: q rows [m0, m0 + kBlockM) of query head `hq`, with the offsets of its
// first row in Q, dO (elements) and in the workspace rows (LSE2, dpsum; times the head dim: dQacc),
// computed once by the walking thread instead of by every thread of the step.
struct alignas(8) BwdStep {
  int valid;     // 0: the walk is over
  int partial;   // 1: a partial tile (bitmap), 0: full
  int hq;
  int q_tile;    // 128-row mask tile
  int m0;        // first q row
  int mask_bh;   // (batch, head) index into the block mask's arrays
  int64_t q_off, do_off, ws_row;
};

struct alignas(16) QWalkState {
  int64_t list_off;        // both lists start at this entry of q_indices / full_q_indices
                           // (-1: no block mask, the q tiles in order)
  int count[2];
  int index[2];            // next entry of each list
  int next_entry[2];       // list s's entry index[s] when index[s] < count[s] (filled by cp.async)
  int started;
  int head0;  // first query head of the CTA
  int rows;   // q rows of the sample that see anything (BwdParams::rows)
  int head;   // 0 .. heads_per_cta - 1 (query head head0 + head)
  int tile;
  int sub;
  int partial;
  int mask_bh;
};

template <int kBlockM>
struct QWalk {
  static constexpr int kSubTiles = kTileSize / kBlockM;

  // Starts a walk over query heads head0 .. head0 + heads_per_cta - 1, over q rows below `rows`.
  __device__ static void start(QWalkState& w, int head0, int rows) {
    w.started = 0;
    w.head0 = head0;
    w.rows = rows;
  }

  // Advances `w` (a register copy of the state) and writes the next step into `s` (s.valid = 0
  // when the walk is over; call it no more after that). Entries fetched after the previous call
  // must have landed (cp.async wait) and be in `w`. Returns the list entry to fetch into
  // next_entry[fetch_side] before the next call (null: none); the caller issues the fetch after
  // it has stored `w` back (fetch_async), so that the store does not overwrite it.
  __device__ static const int32_t* next(QWalkState& w, const BwdParams& p, int b, int kv_tile, BwdStep& s,
                                        int& fetch_side) {
    if (w.started) {
      ++w.sub;
      if (w.sub < kSubTiles && w.tile * kTileSize + w.sub * kBlockM < w.rows) {
        fill(w, p, b, s);
        return nullptr;
      }
      w.sub = 0;
    } else {
      const int head0 = w.head0, rows = w.rows;
      w = QWalkState{};
      w.started = 1;
      w.head0 = head0;
      w.rows = rows;
      open_lists(w, p, b, kv_tile);
    }
    for (;;) {
      const bool has_partial = w.index[0] < w.count[0], has_full = w.index[1] < w.count[1];
      if (has_partial || has_full) {
        // No array indexed by a run-time side: that would put `w` in local memory.
        const bool full = !(has_partial && (!has_full || w.next_entry[0] < w.next_entry[1]));
        const bool listed = w.list_off >= 0;
        const int entry = full ? w.next_entry[1] : w.next_entry[0];
        const int i = (full ? w.index[1] : w.index[0]) + 1;
        const int count = full ? w.count[1] : w.count[0];
        w.tile = listed ? entry : i - 1;
        if (w.tile * kTileSize >= w.rows) {  // ascending tiles: none of this head's others is below
          w.index[0] = w.count[0];
          w.index[1] = w.count[1];
          continue;
        }
        w.partial = !full;
        if (full) {
          w.index[1] = i;
        } else {
          w.index[0] = i;
        }
        fill(w, p, b, s);
        fetch_side = full ? 1 : 0;
        if (!listed || i >= count) return nullptr;
        return (full ? p.mask.full_q_indices : p.mask.q_indices) + w.list_off + i;
      }
      if (++w.head >= p.heads_per_cta) {
        s.valid = 0;
        return nullptr;
      }
      open_lists(w, p, b, kv_tile);
    }
  }

 private:
  // Opens both lists of head `head` (blocking loads: once per head).
  __device__ static void open_lists(QWalkState& w, const BwdParams& p, int b, int kv_tile) {
    const BlockMaskView& m = p.mask;
    w.index[0] = w.index[1] = 0;
    if (!m.present) {
      w.list_off = -1;
      w.count[0] = 0;
      w.count[1] = p.num_q_tiles;
      return;
    }
    const int hq = w.head0 + w.head;
    w.mask_bh = (m.batch == 1 ? 0 : b) * m.heads + (m.heads == 1 ? 0 : hq);
    const int64_t row = static_cast<int64_t>(w.mask_bh) * p.num_kv_tiles + kv_tile;
    w.list_off = row * p.num_q_tiles;
    w.count[0] = __ldg(m.q_num_blocks + row);
    w.count[1] = __ldg(m.full_q_num_blocks + row);
    w.next_entry[0] = w.count[0] > 0 ? __ldg(m.q_indices + w.list_off) : 0;
    w.next_entry[1] = w.count[1] > 0 ? __ldg(m.full_q_indices + w.list_off) : 0;
  }

 public:
  // Issues the fetch returned by next() into the shared state `sw` (after `sw` was stored).
  __device__ static void fetch_async(QWalkState& sw, const int32_t* src, int side) {
    if (src != nullptr) ptx::cp_async_4(ptx::smem_addr(&sw.next_entry[side]), src, true);
  }

 private:
  __device__ static void fill(const QWalkState& w, const BwdParams& p, int b, BwdStep& s) {
    const int hq = w.head0 + w.head, m0 = w.tile * kTileSize + w.sub * kBlockM;
    s.valid = 1;
    s.partial = w.partial;
    s.hq = hq;
    s.q_tile = w.tile;
    s.m0 = m0;
    s.mask_bh = w.mask_bh;
    s.q_off = b * p.q.stride_b + hq * p.q.stride_h + m0 * p.q.stride_t;
    s.do_off = b * p.dout.stride_b + hq * p.dout.stride_h + m0 * p.dout.stride_t;
    s.ws_row = (static_cast<int64_t>(b) * p.q_heads + hq) * p.q_len_pad + m0;
  }
};

}  // namespace flashflex::cuda
