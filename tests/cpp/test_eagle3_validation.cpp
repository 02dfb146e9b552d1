// Validation of the EAGLE3 entry points (flashflex::eagle3_forward / eagle3_backward /
// workspace_size): every rejected argument, one test each, with the exact message and error
// kind. Valid baseline arguments (3 blocks, seq_lengths given) are mutated one field at a time.
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "flashflex/eagle3.hpp"
#include "expect_error.hpp"

namespace ff = flashflex;

namespace {

constexpr auto kInvalid = ff::ErrorKind::kInvalidArgument;
constexpr auto kUnsupported = ff::ErrorKind::kUnsupported;

// B=2, Hq=4, Hkv=2, T=5, D=64, 3 blocks (step 2), float32, contiguous, lengths int64 {5, 3}.
class Eagle3Validation : public ::testing::Test {
 protected:
  static constexpr int64_t kB = 2, kHq = 4, kHkv = 2, kT = 5, kD = 64, kBlocks = 3;

  std::vector<float> q_ = std::vector<float>(kB * kHq * kT * kD, 0.5f);
  std::vector<std::vector<float>> k_ =
      std::vector<std::vector<float>>(kBlocks, std::vector<float>(kB * kHkv * kT * kD, 0.25f));
  std::vector<std::vector<float>> v_ = k_, dk_ = k_, dv_ = k_;
  std::vector<float> out_ = q_, dout_ = q_, dq_ = q_;
  std::vector<float> lse_ = std::vector<float>(kB * kHq * kT), dlse_ = lse_;
  std::vector<int64_t> lengths_ = {kT, 3};

  ff::TensorRef t4(std::vector<float>& data, int64_t heads) {
    return ff::make_tensor(data.data(), ff::DType::kFloat32, {kB, heads, kT, kD});
  }
  std::vector<ff::TensorRef> blocks(std::vector<std::vector<float>>& data) {
    std::vector<ff::TensorRef> r;
    for (auto& d : data) r.push_back(t4(d, kHkv));
    return r;
  }
  ff::TensorRef row_stat(std::vector<float>& data) {
    return ff::make_tensor(data.data(), ff::DType::kFloat32, {kB, kHq, kT});
  }
  ff::Eagle3ForwardArgs fwd() {
    ff::Eagle3ForwardArgs a;
    a.q = t4(q_, kHq);
    a.k_blocks = blocks(k_);
    a.v_blocks = blocks(v_);
    a.seq_lengths = ff::make_tensor(lengths_.data(), ff::DType::kInt64, {kB});
    a.out = t4(out_, kHq);
    a.lse = row_stat(lse_);
    return a;
  }
  ff::Eagle3BackwardArgs bwd() {
    ff::Eagle3BackwardArgs a;
    a.q = t4(q_, kHq);
    a.k_blocks = blocks(k_);
    a.v_blocks = blocks(v_);
    a.seq_lengths = ff::make_tensor(lengths_.data(), ff::DType::kInt64, {kB});
    a.out = t4(out_, kHq);
    a.dout = t4(dout_, kHq);
    a.lse = row_stat(lse_);
    a.dlse = row_stat(dlse_);
    a.dq = t4(dq_, kHq);
    a.dk_blocks = blocks(dk_);
    a.dv_blocks = blocks(dv_);
    return a;
  }
  // The forward and its workspace_size reject alike.
  void expect_fwd(const ff::Eagle3ForwardArgs& a, ff::ErrorKind kind, const std::string& msg) {
    expect_error([&] { ff::eagle3_forward(a); }, kind, msg);
    expect_error([&] { ff::workspace_size(a); }, kind, msg);
  }
  void expect_bwd(const ff::Eagle3BackwardArgs& a, ff::ErrorKind kind, const std::string& msg) {
    expect_error([&] { ff::eagle3_backward(a); }, kind, msg);
    expect_error([&] { ff::workspace_size(a); }, kind, msg);
  }
};

TEST_F(Eagle3Validation, BaselineArgumentsAreAccepted) {
  EXPECT_NO_THROW(ff::eagle3_forward(fwd()));
  EXPECT_NO_THROW(ff::eagle3_backward(bwd()));
  EXPECT_EQ(ff::workspace_size(fwd()), 0u);
  EXPECT_EQ(ff::workspace_size(bwd()), 0u);
}

// ---- block lists ---------------------------------------------------------------------------

TEST_F(Eagle3Validation, NoBlocks) {
  auto a = fwd();
  a.k_blocks.clear();
  a.v_blocks.clear();
  expect_fwd(a, kInvalid, "k_blocks: expected at least one block (K_0), got 0");
}

TEST_F(Eagle3Validation, BlockCountsDiffer) {
  auto a = fwd();
  a.v_blocks.pop_back();
  expect_fwd(a, kInvalid, "v_blocks: expected 3 blocks (as k_blocks), got 2");
}

TEST_F(Eagle3Validation, MissingBlock) {
  auto a = fwd();
  a.k_blocks[1] = ff::TensorRef{};
  expect_fwd(a, kInvalid, "k_blocks[1]: expected a tensor, got none");
}

TEST_F(Eagle3Validation, NullBlockPointer) {
  auto a = fwd();
  a.v_blocks[2].data = nullptr;
  expect_fwd(a, kInvalid, "v_blocks[2]: expected a non-null data pointer, got null");
}

TEST_F(Eagle3Validation, BlockInnermostStrideNotOne) {
  auto a = fwd();
  a.k_blocks[1].strides[3] = 2;
  expect_fwd(a, kInvalid, "k_blocks[1]: expected innermost stride 1, got 2");
}

TEST_F(Eagle3Validation, BlockOffsetOverflowsInt64) {
  auto a = fwd();
  a.k_blocks[1].strides[0] = std::numeric_limits<int64_t>::max() / 2;
  expect_fwd(a, kInvalid, "k_blocks[1]: sizes [2, 2, 5, 64] with its strides overflow the int64 offset range");
}

TEST_F(Eagle3Validation, BlockDtypeDiffers) {
  auto a = fwd();
  a.k_blocks[2].dtype = ff::DType::kBFloat16;
  expect_fwd(a, kInvalid, "k_blocks[2]: expected dtype float32 (as q), got bfloat16");
}

TEST_F(Eagle3Validation, BlockDeviceDiffers) {
  auto a = fwd();
  a.v_blocks[1].device = ff::Device{ff::DeviceType::kCuda, 0};
  expect_fwd(a, kInvalid, "v_blocks[1]: expected device cpu:0 (as q), got cuda:0");
}

TEST_F(Eagle3Validation, BlockLengthDiffersFromFirst) {
  auto a = fwd();
  a.k_blocks[2].sizes[2] = kT - 1;
  expect_fwd(a, kInvalid, "k_blocks[2]: expected seq_len 5 (as k_blocks[0]), got 4 (sizes [2, 2, 4, 64])");
}

TEST_F(Eagle3Validation, BlockHeadsDifferFromFirst) {
  auto a = fwd();
  a.v_blocks[1].sizes[1] = 1;
  expect_fwd(a, kInvalid, "v_blocks[1]: expected heads 2 (as k_blocks[0]), got 1 (sizes [2, 1, 5, 64])");
}

// ---- q against block 0 ---------------------------------------------------------------------

TEST_F(Eagle3Validation, MissingQ) {
  auto a = fwd();
  a.q = ff::TensorRef{};
  expect_fwd(a, kInvalid, "q: expected a tensor, got none");
}

TEST_F(Eagle3Validation, IntegerQ) {
  auto a = fwd();
  a.q.dtype = ff::DType::kInt32;
  expect_fwd(a, kInvalid, "q: expected dtype float32, float16 or bfloat16, got int32");
}

TEST_F(Eagle3Validation, FirstBlockLengthDiffersFromQ) {
  auto a = fwd();
  a.k_blocks[0].sizes[2] = kT - 1;
  expect_fwd(a, kInvalid, "k_blocks[0]: expected seq_len 5 (as q), got 4 (sizes [2, 2, 4, 64])");
}

TEST_F(Eagle3Validation, FirstBlockBatchDiffersFromQ) {
  auto a = fwd();
  a.k_blocks[0].sizes[0] = 1;
  expect_fwd(a, kInvalid, "k_blocks[0]: expected batch 2 (as q), got 1 (sizes [1, 2, 5, 64])");
}

TEST_F(Eagle3Validation, FirstBlockHeadDimDiffersFromQ) {
  auto a = fwd();
  a.k_blocks[0].sizes[3] = 32;
  expect_fwd(a, kInvalid, "k_blocks[0]: expected head_dim 64 (as q), got 32 (sizes [2, 2, 5, 32])");
}

TEST_F(Eagle3Validation, HeadsNotDivisible) {
  auto a = fwd();
  a.k_blocks[0].sizes[1] = 3;
  expect_fwd(a, kInvalid,
             "k_blocks[0]: expected a number of heads dividing q's 4 heads (grouped-query attention), got 3");
}

TEST_F(Eagle3Validation, UnsupportedHeadDim) {
  auto a = fwd();
  a.q.sizes[3] = 32;
  a.k_blocks[0].sizes[3] = 32;
  expect_fwd(a, kUnsupported, "q: expected head_dim in {64, 128, 256}, got 32");
}

// ---- sequence lengths ----------------------------------------------------------------------

TEST_F(Eagle3Validation, SeqLengthsFloatDtype) {
  auto a = fwd();
  a.seq_lengths.dtype = ff::DType::kFloat32;
  expect_fwd(a, kInvalid, "seq_lengths: expected dtype int32 or int64, got float32");
}

TEST_F(Eagle3Validation, SeqLengthsRank) {
  auto a = fwd();
  a.seq_lengths = ff::make_tensor(lengths_.data(), ff::DType::kInt64, {kB, 1});
  expect_fwd(a, kInvalid, "seq_lengths: expected 1 dimensions, got 2 (sizes [2, 1])");
}

TEST_F(Eagle3Validation, SeqLengthsCount) {
  auto a = fwd();
  a.seq_lengths.sizes[0] = 1;
  expect_fwd(a, kInvalid, "seq_lengths: expected batch 2 (one length per sample, as q), got 1 (sizes [1])");
}

TEST_F(Eagle3Validation, SeqLengthsDevice) {
  auto a = fwd();
  a.seq_lengths.device = ff::Device{ff::DeviceType::kCuda, 0};
  expect_fwd(a, kInvalid, "seq_lengths: expected device cpu:0 (as q), got cuda:0");
}

TEST_F(Eagle3Validation, SeqLengthNegative) {
  lengths_ = {kT, -1};
  expect_fwd(fwd(), kInvalid, "seq_lengths[1]: expected a length in [0, 5], got -1");
}

TEST_F(Eagle3Validation, SeqLengthAboveSeqLenInt32) {
  std::vector<int32_t> lengths = {kT + 1, 3};
  auto a = fwd();
  a.seq_lengths = ff::make_tensor(lengths.data(), ff::DType::kInt32, {kB});
  expect_fwd(a, kInvalid, "seq_lengths[0]: expected a length in [0, 5], got 6");
}

// ---- outputs and scale ---------------------------------------------------------------------

TEST_F(Eagle3Validation, OutputShape) {
  auto a = fwd();
  a.out.sizes[1] = 2;
  expect_fwd(a, kInvalid, "out: expected heads 4 (as q), got 2 (sizes [2, 2, 5, 64])");
}

TEST_F(Eagle3Validation, BroadcastOutput) {
  auto a = fwd();
  a.out.strides[1] = 0;
  expect_fwd(a, kInvalid,
             "out: expected an output without broadcast (stride 0) dimensions, got stride 0 in dimension 1 of size 4");
}

TEST_F(Eagle3Validation, LseDtype) {
  auto a = fwd();
  a.lse.dtype = ff::DType::kFloat16;
  expect_fwd(a, kInvalid, "lse: expected dtype float32 (row statistics are float32), got float16");
}

TEST_F(Eagle3Validation, ScaleNotFinite) {
  auto a = fwd();
  a.scale = std::numeric_limits<double>::infinity();
  expect_fwd(a, kInvalid, "scale: expected a finite number, got inf");
}

// ---- backward ------------------------------------------------------------------------------

TEST_F(Eagle3Validation, BackwardNeedsLse) {
  auto a = bwd();
  a.lse = ff::TensorRef{};
  expect_bwd(a, kInvalid, "lse: expected a tensor, got none");
}

TEST_F(Eagle3Validation, BackwardDoutShape) {
  auto a = bwd();
  a.dout.sizes[2] = kT - 1;
  expect_bwd(a, kInvalid, "dout: expected seq_len 5 (as out), got 4 (sizes [2, 4, 4, 64])");
}

TEST_F(Eagle3Validation, BackwardDlseShape) {
  auto a = bwd();
  a.dlse.sizes[1] = 2;
  expect_bwd(a, kInvalid, "dlse: expected heads 4 (as q), got 2 (sizes [2, 2, 5])");
}

TEST_F(Eagle3Validation, BackwardDqDtype) {
  auto a = bwd();
  a.dq.dtype = ff::DType::kFloat16;
  expect_bwd(a, kInvalid, "dq: expected dtype float32 (as q), got float16");
}

TEST_F(Eagle3Validation, BackwardGradientBlockCount) {
  auto a = bwd();
  a.dk_blocks.pop_back();
  expect_bwd(a, kInvalid, "dk_blocks: expected 3 blocks (as k_blocks), got 2");
}

TEST_F(Eagle3Validation, BackwardGradientBlockShape) {
  auto a = bwd();
  a.dv_blocks[1].sizes[2] = kT - 1;
  expect_bwd(a, kInvalid, "dv_blocks[1]: expected seq_len 5 (as k_blocks[0]), got 4 (sizes [2, 2, 4, 64])");
}

TEST_F(Eagle3Validation, BackwardGradientBlockBroadcast) {
  auto a = bwd();
  a.dk_blocks[0].strides[0] = 0;
  expect_bwd(a, kInvalid,
             "dk_blocks[0]: expected an output without broadcast (stride 0) dimensions, got stride 0 in dimension 0 "
             "of size 2");
}

// ---- block 0's prebuilt causal mask -----------------------------------------------------------

// A mask passed in must be one built for q's T on q's device, with the bytes such a build needs.
TEST_F(Eagle3Validation, CausalMaskOfAnotherDevice) {
  alignas(256) static unsigned char buffer[1 << 16];
  auto f = fwd();
  f.causal_mask = ff::Eagle3CausalMask{buffer, sizeof(buffer), kT, ff::Device{ff::DeviceType::kCuda, 0}};
  expect_fwd(f, kInvalid, "causal_mask: expected a mask built on q's device cpu:0, got one of cuda:0");
  auto b = bwd();
  b.causal_mask = f.causal_mask;
  expect_bwd(b, kInvalid, "causal_mask: expected a mask built on q's device cpu:0, got one of cuda:0");
}

TEST_F(Eagle3Validation, CausalMaskOfAnotherLength) {
  alignas(256) static unsigned char buffer[1 << 16];
  auto f = fwd();
  f.causal_mask = ff::Eagle3CausalMask{buffer, sizeof(buffer), kT + 1, ff::Device{}};
  expect_fwd(f, kInvalid, "causal_mask: expected a mask built for seq_len 5 (as q), got one for 6");
}

TEST_F(Eagle3Validation, CausalMaskTooSmallOrMisaligned) {
  alignas(256) static unsigned char buffer[1 << 16];
  const std::size_t needed = ff::eagle3_causal_mask_size(kT);
  const std::string msg = "causal_mask: expected " + std::to_string(needed) +
                          " bytes at a 256-byte aligned address (build_eagle3_causal_mask), got ";
  auto f = fwd();
  f.causal_mask = ff::Eagle3CausalMask{buffer, needed - 1, kT, ff::Device{}};
  expect_fwd(f, kInvalid, msg + std::to_string(needed - 1));
  f.causal_mask = ff::Eagle3CausalMask{buffer + 16, needed, kT, ff::Device{}};
  expect_fwd(f, kInvalid, msg + std::to_string(needed));
}

TEST_F(Eagle3Validation, CausalMaskBuildNeedsCudaAndItsBytes) {
  alignas(256) static unsigned char buffer[1 << 16];
  expect_error([&] { ff::eagle3_causal_mask_size(0); }, kInvalid, "seq_len: expected a positive length, got 0");
  expect_error([&] { ff::build_eagle3_causal_mask(kT, ff::Device{}, ff::Workspace{buffer, sizeof(buffer)}, nullptr); },
               kUnsupported,
               "device: the EAGLE3 causal mask is built on CUDA devices only (the CPU reference needs none)");
  const std::size_t needed = ff::eagle3_causal_mask_size(kT);
  expect_error(
      [&] {
        ff::build_eagle3_causal_mask(kT, ff::Device{ff::DeviceType::kCuda, 0}, ff::Workspace{buffer, needed - 1},
                                     nullptr);
      },
      kInvalid,
      "buffer: expected at least " + std::to_string(needed) + " bytes (eagle3_causal_mask_size), got " +
          std::to_string(needed - 1));
}

// ---- backend -------------------------------------------------------------------------------

// Every tensor on CUDA (float32, the dtype of this fixture), with a length that would be rejected
// on the CPU: values on a device are not read, and the CUDA path refuses the dtype by name before
// touching the device (a build without CUDA reports the missing backend), in both directions.
TEST_F(Eagle3Validation, CudaTensorsReachTheCudaPath) {
  lengths_ = {kT, -1};
  const ff::Device cuda{ff::DeviceType::kCuda, 0};
  const auto msg = [](const char* pass) {
    return ff::has_cuda_backend()
               ? std::string("q: the CUDA ") + pass + " supports bfloat16 and float16, got float32 (the CPU path serves float32)"
               : std::string("q: expected CPU tensors, got CUDA tensors (this build has no CUDA kernels; rebuild with nvcc)");
  };
  auto f = fwd();
  for (ff::TensorRef* t : {&f.q, &f.seq_lengths, &f.out, &f.lse}) t->device = cuda;
  for (auto* list : {&f.k_blocks, &f.v_blocks}) {
    for (ff::TensorRef& t : *list) t.device = cuda;
  }
  expect_error([&] { ff::eagle3_forward(f); }, kUnsupported, msg("EAGLE3 forward"));
  auto b = bwd();
  for (ff::TensorRef* t : {&b.q, &b.seq_lengths, &b.out, &b.dout, &b.lse, &b.dlse, &b.dq}) t->device = cuda;
  for (auto* list : {&b.k_blocks, &b.v_blocks, &b.dk_blocks, &b.dv_blocks}) {
    for (ff::TensorRef& t : *list) t.device = cuda;
  }
  expect_error([&] { ff::eagle3_backward(b); }, kUnsupported, msg("EAGLE3 backward"));
}

}  // namespace
