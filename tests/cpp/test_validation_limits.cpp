// Validation of the index limits, the tile lists and the enum codes of the C++ API, one test per
// rejected argument with its exact message and kind: sizes past what the int32 indices or the
// BlockMask layout hold are rejected before anything is allocated (expanded views, stride 0,
// claim them without memory), in flashflex::forward, eagle3_forward and both block-mask builders.
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "expect_error.hpp"
#include "flashflex/attention.hpp"
#include "flashflex/block_mask_cuda.hpp"
#include "flashflex/eagle3.hpp"
#include "flashflex/mask.hpp"

namespace ff = flashflex;

namespace {

constexpr auto kInvalid = ff::ErrorKind::kInvalidArgument;
constexpr int64_t kD = 64;
constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
const std::string kSeqLimit =
    " <= 2147483520 (2^31 - 128: the indices of its last 128-wide tile must fit in int32), got ";

// One float broadcast (stride 0) over [1, 1, len, kD]: any length, no memory.
ff::TensorRef expanded(float* one_row, int64_t len) {
  return ff::make_tensor(one_row, ff::DType::kFloat32, {1, 1, len, kD}, {0, 0, 0, 1});
}

class Limits : public ::testing::Test {
 protected:
  static constexpr int64_t kQ = 5;
  std::vector<float> row_ = std::vector<float>(kD, 0.5f);
  std::vector<float> q_ = std::vector<float>(kQ * kD, 0.5f), out_ = std::vector<float>(kQ * kD);

  ff::ForwardArgs fwd(int64_t kv_len) {
    ff::ForwardArgs a;
    a.q = ff::make_tensor(q_.data(), ff::DType::kFloat32, {1, 1, kQ, kD});
    a.k = expanded(row_.data(), kv_len);
    a.v = expanded(row_.data(), kv_len);
    a.out = ff::make_tensor(out_.data(), ff::DType::kFloat32, {1, 1, kQ, kD});
    return a;
  }
};

TEST_F(Limits, KeyLengthPastTileIndexLimit) {
  expect_error([&] { ff::forward(fwd(kInt32Max)); }, kInvalid, "k: expected seq_len" + kSeqLimit + "2147483647");
}

TEST_F(Limits, QueryLengthPastTileIndexLimit) {
  auto a = fwd(7);
  a.q = expanded(row_.data(), ff::kMaxSeqLen + 1);
  expect_error([&] { ff::forward(a); }, kInvalid, "q: expected seq_len" + kSeqLimit + "2147483521");
}

// kMaxSeqLen itself passes the limit: the next check (v's length against k's) is what fails.
TEST_F(Limits, LongestSequenceIsWithinTheLimit) {
  auto a = fwd(ff::kMaxSeqLen);
  a.v = expanded(row_.data(), 7);
  expect_error([&] { ff::forward(a); }, kInvalid,
               "v: expected seq_len 2147483520 (as k), got 7 (sizes [1, 1, 7, 64])");
}

TEST_F(Limits, BackwardKeyLengthPastTileIndexLimit) {
  const auto f = fwd(kInt32Max);
  std::vector<float> lse(kQ), dq(kQ * kD);
  ff::BackwardArgs a;
  a.q = f.q;
  a.k = f.k;
  a.v = f.v;
  a.out = f.out;
  a.dout = f.out;
  a.lse = ff::make_tensor(lse.data(), ff::DType::kFloat32, {1, 1, kQ});
  a.dq = ff::make_tensor(dq.data(), ff::DType::kFloat32, {1, 1, kQ, kD});
  a.dk = a.dv = expanded(row_.data(), kInt32Max);
  expect_error([&] { ff::backward(a); }, kInvalid, "k: expected seq_len" + kSeqLimit + "2147483647");
}

TEST_F(Limits, Eagle3SequencePastTileIndexLimit) {
  ff::Eagle3ForwardArgs a;
  a.q = expanded(row_.data(), kInt32Max);
  a.k_blocks = {expanded(row_.data(), kInt32Max)};
  a.v_blocks = a.k_blocks;
  a.out = a.q;
  expect_error([&] { ff::eagle3_forward(a); }, kInvalid, "q: expected seq_len" + kSeqLimit + "2147483647");
}

TEST(BlockMaskLimits, LengthPastTileIndexLimit) {
  expect_error([] { ff::build_block_mask(ff::Mask::causal(), 1, 1, kInt32Max, kInt32Max); }, kInvalid,
               "build_block_mask: expected q_len" + kSeqLimit + "2147483647");
}

TEST(BlockMaskLimits, TooManyTiles) {
  expect_error([] { ff::build_block_mask(ff::Mask::causal(), 1, 1, int64_t{1} << 30, int64_t{1} << 30); }, kInvalid,
               "build_block_mask: expected at most 2147483647 tiles of 128 x 128 (int32 bitmap ids), got batch 1 * "
               "heads 1 * 8388608 q tiles * 8388608 kv tiles (q_len 1073741824, kv_len 1073741824)");
}

// The tiles counted are those of the result: a mask without per-sample data is built once.
TEST(BlockMaskLimits, TilesOfABroadcastMaskAreCountedOnce) {
  const ff::HostBlockMask m = ff::build_block_mask(ff::Mask::causal(), kInt32Max, kInt32Max, 512, 512);
  EXPECT_EQ(m.batch, 1);
  EXPECT_EQ(m.heads, 1);
}

TEST(BlockMaskLimits, CudaBuilderLengthPastTileIndexLimit) {
  expect_error([] { ff::block_mask_cuda_size(ff::Mask::causal(), 1, 1, 128, kInt32Max); }, kInvalid,
               "build_block_mask_cuda: expected kv_len" + kSeqLimit + "2147483647");
}

TEST(BlockMaskLimits, CudaBuilderTooManyTiles) {
  expect_error([] { ff::block_mask_cuda_size(ff::Mask::causal(), 1, 1, int64_t{1} << 30, int64_t{1} << 30); },
               kInvalid,
               "build_block_mask_cuda: expected at most 2147483647 tiles of 128 x 128 (int32 bitmap ids), got batch "
               "1 * heads 1 * 8388608 q tiles * 8388608 kv tiles (q_len 1073741824, kv_len 1073741824)");
}

// create_block_mask(..., device="cuda") of a build without CUDA, in C++.
TEST(BlockMaskLimits, CudaBuilderWithoutCudaBackend) {
  if (ff::has_cuda_backend()) GTEST_SKIP() << "this build has CUDA kernels";
  std::vector<unsigned char> workspace(1 << 16);
  const ff::Workspace ws{workspace.data(), workspace.size()};
  expect_error([&] { ff::build_block_mask_cuda(ff::Mask::causal(), 1, 1, 128, 128, ws, 0, nullptr); },
               ff::ErrorKind::kUnsupported,
               "build_block_mask_cuda: this build has no CUDA kernels (rebuild with nvcc); use build_block_mask");
}

// ---- masks ---------------------------------------------------------------------------------

TEST(MaskArguments, Eagle3LengthPastBlockLen) {
  expect_error([] { ff::Mask::eagle3(2, 16, {16, 17}); }, kInvalid,
               "eagle3: expected lengths[1] <= block_len 16, got 17");
}

// One sample's data apply to every sample, as in the Python mask_mods and create_block_mask.
TEST(MaskArguments, OneSampleDataBroadcastOverTheBatch) {
  const ff::HostBlockMask shared = ff::build_block_mask(ff::Mask::prefix_lm({81}), 3, 2, 130, 130);
  const ff::HostBlockMask one = ff::build_block_mask(ff::Mask::prefix_lm({81}), 1, 1, 130, 130);
  EXPECT_EQ(shared.batch, 1);
  EXPECT_EQ(shared.kv_indices, one.kv_indices);
  EXPECT_EQ(shared.bitmaps, one.bitmaps);
  for (int64_t b = 0; b < 3; ++b) EXPECT_TRUE(shared.visible(b, 0, 5, 80));
}

TEST(MaskArguments, CudaBuilderBroadcastsOneSampleData) {
  const ff::BlockMaskCudaSize size = ff::block_mask_cuda_size(ff::Mask::prefix_lm({81}), 3, 1, 130, 130);
  EXPECT_EQ(size.batch, 1);
}

// ---- tile lists of a block mask (kv_indices past the KV tiles and the like) ------------------

class TileLists : public ::testing::Test {
 protected:
  static constexpr int64_t kLen = 300;  // 3 tiles
  std::vector<float> x_ = std::vector<float>(kLen * kD, 0.5f), out_ = std::vector<float>(kLen * kD);
  ff::HostBlockMask host_ = ff::build_block_mask(ff::Mask::causal(), 1, 1, kLen, kLen);

  void expect_rejected(const ff::HostBlockMask& broken, const std::string& message) {
    const ff::BlockMask view = broken.view();
    ff::ForwardArgs a;
    a.q = a.k = a.v = ff::make_tensor(x_.data(), ff::DType::kFloat32, {1, 1, kLen, kD});
    a.out = ff::make_tensor(out_.data(), ff::DType::kFloat32, {1, 1, kLen, kD});
    a.block_mask = &view;
    expect_error([&] { ff::forward(a); }, kInvalid, message);
  }
};

TEST_F(TileLists, FullKvIndexPastTheKvTiles) {
  auto broken = host_;
  ASSERT_EQ(broken.full_kv_num_blocks[1], 1);
  broken.full_kv_indices[1 * broken.num_kv_tiles] = 7;
  expect_rejected(broken, "block_mask: expected kv indices in [0, 3), got 7 at row 1");
}

TEST_F(TileLists, KvCountPastTheKvTiles) {
  auto broken = host_;
  broken.kv_num_blocks[0] = 4;
  expect_rejected(broken, "block_mask: expected kv counts in [0, 3] with partial + full <= 3, got partial 4 and full 0 "
                          "at row 0");
}

TEST_F(TileLists, QIndexPastTheQTiles) {
  auto broken = host_;
  broken.q_indices[0] = 9;
  expect_rejected(broken, "block_mask: expected q indices in [0, 3), got 9 at row 0");
}

// ---- enum codes (bindings pass them as integers) ---------------------------------------------

class Codes : public Limits {};

TEST_F(Codes, UnknownDtypeCode) {
  auto a = fwd(7);
  a.q.dtype = static_cast<ff::DType>(9);
  expect_error([&] { ff::forward(a); }, kInvalid,
               "q: expected a dtype code of float32 (0), float16 (1), bfloat16 (2), int32 (3) or int64 (4), got 9");
}

TEST_F(Codes, UnknownDeviceType) {
  auto a = fwd(7);
  a.k.device = ff::Device{static_cast<ff::DeviceType>(5), 0};
  expect_error([&] { ff::forward(a); }, kInvalid, "k: expected device type cpu (0) or cuda (1), got 5");
}

TEST_F(Codes, NegativeCudaDeviceIndex) {
  auto a = fwd(7);
  a.v.device = ff::Device{ff::DeviceType::kCuda, -1};
  expect_error([&] { ff::forward(a); }, kInvalid, "v: expected a CUDA device index >= 0, got -1");
}

TEST_F(Codes, UnknownScoreModKind) {
  auto a = fwd(7);
  a.score_mod.kind = static_cast<ff::ScoreModKind>(9);
  expect_error([&] { ff::forward(a); }, kInvalid,
               "score_mod.kind: expected none, softcap, alibi, bias or linked, got 9");
}

}  // namespace
