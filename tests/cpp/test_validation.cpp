// Validation of the public entry points: every rejected argument, one test each, with the
// exact message and error kind. Valid baseline arguments are mutated one field at a time.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "flashflex/attention.hpp"
#include "flashflex/mask.hpp"
#include "expect_error.hpp"

namespace ff = flashflex;

namespace {

// B=2, Hq=4, Hkv=2, Q_LEN=5, KV_LEN=7, D=64, float32, contiguous.
class Validation : public ::testing::Test {
 protected:
  static constexpr int64_t kB = 2, kHq = 4, kHkv = 2, kQ = 5, kKv = 7, kD = 64;

  std::vector<float> q_ = std::vector<float>(kB * kHq * kQ * kD, 0.5f);
  std::vector<float> k_ = std::vector<float>(kB * kHkv * kKv * kD, 0.25f);
  std::vector<float> v_ = std::vector<float>(kB * kHkv * kKv * kD, 1.0f);
  std::vector<float> out_ = std::vector<float>(kB * kHq * kQ * kD);
  std::vector<float> lse_ = std::vector<float>(kB * kHq * kQ);
  std::vector<float> dq_ = q_, dk_ = k_, dv_ = v_, dout_ = out_;

  ff::TensorRef t4(std::vector<float>& data, int64_t h, int64_t len) {
    return ff::make_tensor(data.data(), ff::DType::kFloat32, {kB, h, len, kD});
  }
  ff::ForwardArgs fwd() {
    ff::ForwardArgs a;
    a.q = t4(q_, kHq, kQ);
    a.k = t4(k_, kHkv, kKv);
    a.v = t4(v_, kHkv, kKv);
    a.out = t4(out_, kHq, kQ);
    a.lse = ff::make_tensor(lse_.data(), ff::DType::kFloat32, {kB, kHq, kQ});
    return a;
  }
  ff::BackwardArgs bwd() {
    ff::BackwardArgs a;
    a.q = t4(q_, kHq, kQ);
    a.k = t4(k_, kHkv, kKv);
    a.v = t4(v_, kHkv, kKv);
    a.out = t4(out_, kHq, kQ);
    a.dout = t4(dout_, kHq, kQ);
    a.lse = ff::make_tensor(lse_.data(), ff::DType::kFloat32, {kB, kHq, kQ});
    a.dq = t4(dq_, kHq, kQ);
    a.dk = t4(dk_, kHkv, kKv);
    a.dv = t4(dv_, kHkv, kKv);
    return a;
  }
  void expect_fwd(const ff::ForwardArgs& a, ff::ErrorKind kind, const std::string& msg) {
    expect_error([&] { ff::forward(a); }, kind, msg);
  }
  void expect_bwd(const ff::BackwardArgs& a, ff::ErrorKind kind, const std::string& msg) {
    expect_error([&] { ff::backward(a); }, kind, msg);
  }
};

constexpr auto kInvalid = ff::ErrorKind::kInvalidArgument;
constexpr auto kUnsupported = ff::ErrorKind::kUnsupported;

TEST_F(Validation, BaselineArgumentsAreAccepted) {
  EXPECT_NO_THROW(ff::forward(fwd()));
  EXPECT_NO_THROW(ff::backward(bwd()));
  EXPECT_EQ(ff::workspace_size(fwd()), 0u);
  EXPECT_EQ(ff::workspace_size(bwd()), 0u);
}

TEST_F(Validation, MissingTensor) {
  auto a = fwd();
  a.k = ff::TensorRef{};
  expect_fwd(a, kInvalid, "k: expected a tensor, got none");
}

TEST_F(Validation, WrongRank) {
  auto a = fwd();
  a.q = ff::make_tensor(q_.data(), ff::DType::kFloat32, {kB * kHq, kQ, kD});
  expect_fwd(a, kInvalid, "q: expected 4 dimensions, got 3 (sizes [8, 5, 64])");
}

TEST_F(Validation, ZeroSize) {
  auto a = fwd();
  a.q.sizes[2] = 0;
  expect_fwd(a, kInvalid, "q: expected every size >= 1, got size 0 in dimension 2 (sizes [2, 4, 0, 64])");
}

TEST_F(Validation, NegativeStride) {
  auto a = fwd();
  a.v.strides[2] = -64;
  expect_fwd(a, kInvalid, "v: expected non-negative strides, got stride -64 in dimension 2");
}

TEST_F(Validation, NullPointer) {
  auto a = fwd();
  a.v.data = nullptr;
  expect_fwd(a, kInvalid, "v: expected a non-null data pointer, got null");
}

TEST_F(Validation, InnermostStrideNotOne) {
  auto a = fwd();
  a.k.strides[3] = 2;
  expect_fwd(a, kInvalid, "k: expected innermost stride 1, got 2");
}

TEST_F(Validation, BroadcastOutput) {
  auto a = fwd();
  a.out.strides[1] = 0;
  expect_fwd(a, kInvalid,
             "out: expected an output without broadcast (stride 0) dimensions, got stride 0 in dimension 1 of size 4");
}

TEST_F(Validation, SizeOverflowsIndexType) {
  auto a = fwd();
  a.q.sizes[2] = int64_t{1} << 31;
  expect_fwd(a, kInvalid, "q: size 2147483648 in dimension 2 overflows the int32 index range (max 2147483647)");
}

TEST_F(Validation, OffsetOverflowsInt64) {
  auto a = fwd();
  a.k.strides[0] = std::numeric_limits<int64_t>::max() / 2;
  expect_fwd(a, kInvalid, "k: sizes [2, 2, 7, 64] with its strides overflow the int64 offset range");
}

TEST_F(Validation, MismatchedDtype) {
  auto a = fwd();
  a.v.dtype = ff::DType::kBFloat16;
  expect_fwd(a, kInvalid, "v: expected dtype float32 (as q), got bfloat16");
}

// Integer dtypes exist for index tensors (EAGLE3 sequence lengths), never for attention inputs.
TEST_F(Validation, IntegerQ) {
  auto a = fwd();
  a.q.dtype = ff::DType::kInt32;
  expect_fwd(a, kInvalid, "q: expected dtype float32, float16 or bfloat16, got int32");
}

TEST_F(Validation, MismatchedDevice) {
  auto a = fwd();
  a.k.device = ff::Device{ff::DeviceType::kCuda, 0};
  expect_fwd(a, kInvalid, "k: expected device cpu:0 (as q), got cuda:0");
}

TEST_F(Validation, MismatchedBatch) {
  auto a = fwd();
  a.k.sizes[0] = 3;
  expect_fwd(a, kInvalid, "k: expected batch 2 (as q), got 3 (sizes [3, 2, 7, 64])");
}

TEST_F(Validation, MismatchedKeyHeadDim) {
  auto a = fwd();
  a.k.sizes[3] = 128;
  expect_fwd(a, kInvalid, "k: expected head_dim 64 (as q), got 128 (sizes [2, 2, 7, 128])");
}

TEST_F(Validation, MismatchedValueLength) {
  auto a = fwd();
  a.v.sizes[2] = 6;
  expect_fwd(a, kInvalid, "v: expected seq_len 7 (as k), got 6 (sizes [2, 2, 6, 64])");
}

TEST_F(Validation, HeadsNotDivisible) {
  auto a = fwd();
  a.k.sizes[1] = 3;
  a.v.sizes[1] = 3;
  expect_fwd(a, kInvalid, "k: expected a number of heads dividing q's 4 heads (grouped-query attention), got 3");
}

TEST_F(Validation, UnsupportedHeadDim) {
  auto a = fwd();
  for (ff::TensorRef* t : {&a.q, &a.k, &a.v, &a.out}) t->sizes[3] = 32;
  expect_fwd(a, kUnsupported, "q: expected head_dim in {64, 128, 256}, got 32");
}

TEST_F(Validation, ValueHeadDimDiffers) {
  auto a = fwd();
  a.q.sizes[3] = a.k.sizes[3] = 128;
  expect_fwd(a, kUnsupported, "v: expected head_dim 128 (as q), got 64");
}

TEST_F(Validation, OutputShape) {
  auto a = fwd();
  a.out.sizes[2] = 4;
  expect_fwd(a, kInvalid, "out: expected seq_len 5 (as q, with v's head_dim), got 4 (sizes [2, 4, 4, 64])");
}

TEST_F(Validation, LseDtype) {
  auto a = fwd();
  a.lse.dtype = ff::DType::kFloat16;
  expect_fwd(a, kInvalid, "lse: expected dtype float32 (row statistics are float32), got float16");
}

TEST_F(Validation, LseShape) {
  auto a = fwd();
  a.lse.sizes[1] = 2;
  expect_fwd(a, kInvalid, "lse: expected heads 4 (as q), got 2 (sizes [2, 2, 5])");
}

TEST_F(Validation, ScaleNotFinite) {
  auto a = fwd();
  a.scale = std::numeric_limits<double>::quiet_NaN();
  expect_fwd(a, kInvalid, "scale: expected a finite number, got nan");
}

TEST_F(Validation, SoftcapNotPositive) {
  auto a = fwd();
  a.score_mod = ff::ScoreMod::soft_cap(0.0);
  expect_fwd(a, kInvalid, "score_mod.softcap: expected a finite cap > 0, got 0");
}

TEST_F(Validation, AlibiSlopeCount) {
  std::vector<float> slopes(3, 0.5f);
  auto a = fwd();
  a.score_mod = ff::ScoreMod::alibi(ff::make_tensor(slopes.data(), ff::DType::kFloat32, {3}));
  expect_fwd(a, kInvalid, "score_mod.alibi_slopes: expected 4 slopes (one per query head), got 3");
}

TEST_F(Validation, AlibiSlopeDtype) {
  std::vector<float> slopes(4, 0.5f);
  auto a = fwd();
  a.score_mod = ff::ScoreMod::alibi(ff::make_tensor(slopes.data(), ff::DType::kBFloat16, {4}));
  expect_fwd(a, kInvalid, "score_mod.alibi_slopes: expected dtype float32 (ALiBi slopes are float32), got bfloat16");
}

TEST_F(Validation, BiasShape) {
  std::vector<float> bias(kB * kHq * kQ * kQ, 0.1f);
  auto a = fwd();
  a.score_mod = ff::ScoreMod::additive_bias(ff::make_tensor(bias.data(), ff::DType::kFloat32, {kB, kHq, kQ, kQ}));
  expect_fwd(a, kInvalid, "score_mod.bias: expected sizes [2 or 1, 4 or 1, 5, 7], got [2, 4, 5, 5]");
}

TEST_F(Validation, DbiasWithoutBias) {
  std::vector<float> dbias(kB * kHq * kQ * kKv);
  auto a = bwd();
  a.dbias = ff::make_tensor(dbias.data(), ff::DType::kFloat32, {kB, kHq, kQ, kKv});
  expect_bwd(a, kInvalid, "dbias: expected only with score_mod bias, got score_mod none");
}

TEST_F(Validation, DbiasShape) {
  std::vector<float> bias(kHq * kQ * kKv, 0.1f), dbias(kB * kHq * kQ * kKv);
  auto a = bwd();
  a.score_mod = ff::ScoreMod::additive_bias(ff::make_tensor(bias.data(), ff::DType::kFloat32, {1, kHq, kQ, kKv}));
  a.dbias = ff::make_tensor(dbias.data(), ff::DType::kFloat32, {kB, kHq, kQ, kKv});
  expect_bwd(a, kInvalid, "dbias: expected sizes [1, 4, 5, 7] (as score_mod.bias), got [2, 4, 5, 7]");
}

TEST_F(Validation, BackwardNeedsLse) {
  auto a = bwd();
  a.lse = ff::TensorRef{};
  expect_bwd(a, kInvalid, "lse: expected a tensor, got none");
}

TEST_F(Validation, BackwardGradientShape) {
  auto a = bwd();
  a.dk.sizes[1] = kHq;
  expect_bwd(a, kInvalid, "dk: expected heads 2 (as k), got 4 (sizes [2, 4, 7, 64])");
}

TEST_F(Validation, BackwardDoutDtype) {
  auto a = bwd();
  a.dout.dtype = ff::DType::kFloat16;
  expect_bwd(a, kInvalid, "dout: expected dtype float32 (as q), got float16");
}

TEST_F(Validation, CudaTensorsWithoutCudaBackend) {
  if (ff::has_cuda_backend()) GTEST_SKIP() << "this build has CUDA kernels";
  auto a = fwd();
  for (ff::TensorRef* t : {&a.q, &a.k, &a.v, &a.out, &a.lse}) t->device = ff::Device{ff::DeviceType::kCuda, 0};
  expect_fwd(a, kUnsupported, "q: expected CPU tensors, got CUDA tensors (this build has no CUDA kernels; rebuild with nvcc)");
}

// ---- block mask ----------------------------------------------------------------------------

class BlockMaskValidation : public Validation {
 protected:
  ff::HostBlockMask host_ = ff::build_block_mask(ff::Mask::causal(), kB, kHq, kQ, kKv);
};

TEST_F(BlockMaskValidation, LengthsMismatch) {
  auto wrong = ff::build_block_mask(ff::Mask::causal(), kB, kHq, kQ, kKv + 1);
  auto view = wrong.view();
  auto a = fwd();
  a.block_mask = &view;
  expect_fwd(a, kInvalid, "block_mask: expected sizes (q_len 5, kv_len 7) as q and k, got (5, 8)");
}

TEST_F(BlockMaskValidation, TileCountMismatch) {
  auto view = host_.view();
  view.num_kv_tiles = 2;
  auto a = fwd();
  a.block_mask = &view;
  expect_fwd(a, kInvalid, "block_mask: expected (1, 1) tiles of 128 for q_len 5 and kv_len 7, got (1, 2)");
}

TEST_F(BlockMaskValidation, BatchMismatch) {
  auto view = host_.view();
  view.batch = 3;
  auto a = fwd();
  a.block_mask = &view;
  expect_fwd(a, kInvalid, "block_mask: expected batch 2 or 1 (as q), got 3");
}

TEST_F(BlockMaskValidation, HeadsMismatch) {
  auto view = host_.view();
  view.heads = 2;
  auto a = fwd();
  a.block_mask = &view;
  expect_fwd(a, kInvalid, "block_mask: expected heads 4 or 1 (as q), got 2");
}

TEST_F(BlockMaskValidation, DeviceMismatch) {
  auto view = host_.view();
  view.device = ff::Device{ff::DeviceType::kCuda, 1};
  auto a = fwd();
  a.block_mask = &view;
  expect_fwd(a, kInvalid, "block_mask: expected device cpu:0 (as q), got cuda:1");
}

TEST_F(BlockMaskValidation, NullList) {
  auto view = host_.view();
  view.q_indices = nullptr;
  auto a = fwd();
  a.block_mask = &view;
  expect_fwd(a, kInvalid, "block_mask.q_indices: expected a non-null pointer, got null");
}

TEST_F(BlockMaskValidation, IndexOutOfRange) {
  auto broken = host_;
  broken.kv_indices[0] = 5;
  auto view = broken.view();
  auto a = fwd();
  a.block_mask = &view;
  expect_fwd(a, kInvalid, "block_mask: expected kv indices in [0, 1), got 5 at row 0");
}

TEST_F(BlockMaskValidation, PartialTileWithoutBitmap) {
  auto broken = host_;
  broken.partial_tile_ids[0] = -1;
  auto view = broken.view();
  auto a = fwd();
  a.block_mask = &view;
  expect_fwd(a, kInvalid,
             "block_mask.partial_tile_ids: expected a bitmap index in [0, 1) for partial tile (0, 0), got -1");
}

}  // namespace

namespace {

TEST(BlockMaskListValidation, TileListedTwice) {
  constexpr int64_t kLen = 300, kD = 64;
  std::vector<float> q(kLen * kD, 0.5f), out(kLen * kD);
  ff::HostBlockMask host = ff::build_block_mask(ff::Mask::causal(), 1, 1, kLen, kLen);
  // q-tile 1 lists kv-tile 0 as full and kv-tile 1 as partial; list kv-tile 1 as full too.
  ASSERT_EQ(host.full_kv_num_blocks[1], 1);
  ASSERT_EQ(host.kv_num_blocks[1], 1);
  ASSERT_EQ(host.kv_indices[1 * host.num_kv_tiles], 1);
  host.full_kv_indices[1 * host.num_kv_tiles] = 1;
  const ff::BlockMask view = host.view();
  ff::ForwardArgs a;
  a.q = a.k = a.v = ff::make_tensor(q.data(), ff::DType::kFloat32, {1, 1, kLen, kD});
  a.out = ff::make_tensor(out.data(), ff::DType::kFloat32, {1, 1, kLen, kD});
  a.block_mask = &view;
  expect_error([&] { ff::forward(a); }, kInvalid,
               "block_mask: expected each tile at most once in the kv lists (partial and full together), "
               "got tile 1 twice at row 1");
}

}  // namespace
