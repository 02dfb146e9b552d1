// Tests of the GPU block-mask builder's host side (src/cuda/mask/block_mask_plan.cpp), which needs no
// GPU: the partial-tile capacity bounds the CPU builder's true count for every built-in mask,
// the BlockMask shape matches the CPU builder's, the layout fits the buffer, and unsupported
// masks are refused with a clear error.
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cuda/mask/block_mask_device.hpp"
#include "flashflex/block_mask.hpp"
#include "flashflex/block_mask_cuda.hpp"
#include "flashflex/error.hpp"
#include "flashflex/mask.hpp"

namespace flashflex {
namespace {

struct Case {
  std::string name;
  Mask mask;
  int64_t batch, q_len, kv_len;
};

std::vector<int32_t> sorted_doc_ids(int64_t batch, int64_t len, std::mt19937& rng) {
  std::vector<int32_t> ids(static_cast<size_t>(batch * len));
  for (int64_t b = 0; b < batch; ++b) {
    int32_t doc = 0;
    for (int64_t i = 0; i < len; ++i) {
      if (i > 0 && rng() % 97 == 0) ++doc;
      ids[b * len + i] = doc;
    }
  }
  return ids;
}

std::vector<Case> cases() {
  std::mt19937 rng(7);
  std::vector<Case> out;
  const std::pair<int64_t, int64_t> sizes[] = {{1, 1}, {127, 300}, {128, 128}, {129, 129}, {300, 257},
                                               {513, 1000}, {1000, 513}, {256, 384}};
  for (const auto& [q, kv] : sizes) {
    const std::string dims = "_" + std::to_string(q) + "x" + std::to_string(kv);
    out.push_back({"causal" + dims, Mask::causal(), 1, q, kv});
    out.push_back({"causal_bottom_right" + dims, Mask::causal(kv - q), 1, q, kv});
    out.push_back({"causal_offset_37" + dims, Mask::causal(37), 1, q, kv});
    out.push_back({"window" + dims, Mask::sliding_window(100, 0), 1, q, kv});
    out.push_back({"window_both" + dims, Mask::sliding_window(5, 200, -64), 1, q, kv});
    out.push_back({"prefix" + dims, Mask::prefix_lm({0, q / 2, q + 7}), 3, q, kv});
    out.push_back({"padding" + dims, Mask::padding({q, q / 3, 1}, {kv / 2, kv, 0}), 3, q, kv});
    out.push_back({"padding_kv" + dims, Mask::padding({}, {kv / 2 + 1, 3}), 2, q, kv});
    out.push_back({"document" + dims,
                   Mask::document(sorted_doc_ids(2, q, rng), sorted_doc_ids(2, kv, rng), 2), 2, q, kv});
    std::vector<int32_t> unsorted(static_cast<size_t>(q));
    for (auto& id : unsorted) id = static_cast<int32_t>(rng() % 3);
    if (q == kv) out.push_back({"document_unsorted" + dims, Mask::document(unsorted, {}, 1), 1, q, kv});
    out.push_back({"causal_and_padding" + dims, Mask::causal() & Mask::padding({q / 2, q}, {}), 2, q, kv});
    out.push_back({"window_or_prefix" + dims, Mask::sliding_window(3, 3) | Mask::prefix_lm({q / 3}), 1, q, kv});
  }
  for (int64_t t : {1, 100, 128, 129, 300, 512}) {
    for (int64_t step : {0, 1, 2, 6}) {
      const std::string name = "eagle3_T" + std::to_string(t) + "_step" + std::to_string(step);
      out.push_back({name, Mask::eagle3(step, t), 1, t, (step + 1) * t});
      out.push_back({name + "_lengths", Mask::eagle3(step, t, {t, t / 2, t / 3 + 1}), 3, t, (step + 1) * t});
      out.push_back({name + "_and_causal", Mask::eagle3(step, t) & Mask::causal(step * t), 1, t, (step + 1) * t});
    }
  }
  return out;
}

TEST(BlockMaskCudaPlan, CapacityBoundsTheCpuCount) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    const HostBlockMask cpu = build_block_mask(c.mask, c.batch, 2, c.q_len, c.kv_len);
    const cuda::DeviceBlockMaskPlan plan = cuda::plan_device_block_mask(c.mask, c.batch, 2, c.q_len, c.kv_len);
    EXPECT_EQ(plan.batch, cpu.batch);
    EXPECT_EQ(plan.heads, cpu.heads);
    EXPECT_EQ(plan.num_q_tiles, cpu.num_q_tiles);
    EXPECT_EQ(plan.num_kv_tiles, cpu.num_kv_tiles);
    EXPECT_GE(plan.partial_capacity, cpu.num_partial_tiles());
    EXPECT_LE(plan.partial_capacity, plan.batch * plan.num_q_tiles * plan.num_kv_tiles);
    // Every region is 256-byte aligned and inside the buffer.
    const cuda::DeviceBlockMaskOffsets& o = plan.offsets;
    for (std::size_t offset : {o.kv_num_blocks, o.kv_indices, o.full_kv_num_blocks, o.full_kv_indices,
                               o.q_num_blocks, o.q_indices, o.full_q_num_blocks, o.full_q_indices,
                               o.partial_tile_ids, o.bitmaps, o.tile_states, o.row_partials, o.row_offsets,
                               o.counters, o.sample_data}) {
      EXPECT_EQ(offset % 256, 0u);
      EXPECT_LE(offset, plan.bytes);
    }
    EXPECT_EQ(o.bitmaps + static_cast<std::size_t>(plan.partial_capacity) * kBitmapWords * 4, plan.bytes);
    const BlockMaskCudaSize size = block_mask_cuda_size(c.mask, c.batch, 2, c.q_len, c.kv_len);
    EXPECT_EQ(size.workspace_bytes, plan.bytes);
    EXPECT_EQ(size.num_partial_tiles, plan.partial_capacity);
  }
}

// The bounds are tight where it matters: causal has one partial tile per q-tile row, and the
// EAGLE3 step mask reserves 2 + 2 * step per row plus one row of tiles.
TEST(BlockMaskCudaPlan, TightBoundsOfTheCommonMasks) {
  const int64_t t = 16384;
  const cuda::DeviceBlockMaskPlan causal = cuda::plan_device_block_mask(Mask::causal(), 1, 1, t, t);
  EXPECT_EQ(causal.partial_capacity, t / kTileSize);
  EXPECT_EQ(causal.sample_data_bytes, 0u);
  EXPECT_EQ(causal.num_nodes, 1);
  const cuda::DeviceBlockMaskPlan eagle3 = cuda::plan_device_block_mask(Mask::eagle3(6, t), 1, 1, t, 7 * t);
  EXPECT_EQ(eagle3.partial_capacity, 128 * 14 + 7 * 128);
  EXPECT_EQ(eagle3.sample_data_bytes, 0u);
  const HostBlockMask cpu = build_block_mask(Mask::eagle3(6, t), 1, 1, t, 7 * t);
  EXPECT_GE(eagle3.partial_capacity, cpu.num_partial_tiles());
}

TEST(BlockMaskCudaPlan, RefusesWhatTheGpuCannotBuild) {
  try {
    cuda::plan_device_block_mask(Mask::causal() & Mask::predicate([](int64_t, int64_t, int64_t, int64_t) {
                                   return true;
                                 }),
                                 1, 1, 128, 128);
    ADD_FAILURE() << "expected flashflex::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("mask: expected built-in masks only"), std::string::npos) << e.what();
  }
  Mask big = Mask::causal();
  for (int i = 0; i < 8; ++i) big = big & Mask::sliding_window(i, i);
  try {
    cuda::plan_device_block_mask(big, 1, 1, 128, 128);
    ADD_FAILURE() << "expected flashflex::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_EQ(std::string(e.what()),
              "build_block_mask_cuda: mask: expected at most 16 nodes (leaves and & / | operators) for the GPU "
              "builder, got 17");
  }
  try {
    cuda::plan_device_block_mask(Mask::eagle3(2, 100), 1, 1, 100, 200);
    ADD_FAILURE() << "expected flashflex::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_EQ(std::string(e.what()),
              "eagle3: expected kv_len = (step + 1) * block_len = (2 + 1) * 100 = 300, got 200");
  }
}

}  // namespace
}  // namespace flashflex
