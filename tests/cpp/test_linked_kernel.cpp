// The C++ side of linked score mods (flashflex/linked_kernel.hpp, ScoreModKind::kLinked) that a
// machine without a GPU can check: what load_linked_kernel refuses before touching the driver,
// and what the validation of a forward with a linked mod refuses, each with its message and kind.
// Loading and launching run on the GPU (tests/python/test_score_mod_linked_cuda.py).
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "expect_error.hpp"
#include "flashflex/attention.hpp"
#include "flashflex/linked_kernel.hpp"

namespace ff = flashflex;

namespace {

constexpr auto kInvalid = ff::ErrorKind::kInvalidArgument;
constexpr auto kUnsupported = ff::ErrorKind::kUnsupported;

const unsigned char kElf[] = {0x7f, 'E', 'L', 'F', 0, 0, 0, 0};

TEST(LinkedKernel, RefusesAnImageThatIsNoCubin) {
  const unsigned char ptx[] = {'.', 'v', 'e', 'r', 's', 'i', 'o', 'n'};
  const ff::LinkedKernelKind kind{ff::KernelPass::kForward, ff::DType::kBFloat16, 128, ff::Backend::kSm90};
  expect_error([&] { ff::load_linked_kernel(ptx, sizeof ptx, kind); }, kInvalid,
               "image: expected a cubin (an ELF image), as nvJitLink links it");
  expect_error([&] { ff::load_linked_kernel(nullptr, 0, kind); }, kInvalid,
               "image: expected a cubin (an ELF image), as nvJitLink links it");
}

TEST(LinkedKernel, RefusesKindsWithoutLtoIr) {
  const auto load = [](ff::KernelPass pass, ff::DType dtype, int head_dim, ff::Backend family) {
    ff::load_linked_kernel(kElf, sizeof kElf, {pass, dtype, head_dim, family});
  };
  constexpr auto kSm80 = ff::Backend::kSm80, kSm90 = ff::Backend::kSm90;
  expect_error([&] { load(static_cast<ff::KernelPass>(2), ff::DType::kBFloat16, 128, kSm90); }, kInvalid,
               "kind.pass: expected forward (0) or backward (1), got 2");
  expect_error([&] { load(ff::KernelPass::kForward, ff::DType::kFloat32, 128, kSm80); }, kInvalid,
               "kind.dtype: expected bfloat16 or float16, got float32");
  expect_error([&] { load(ff::KernelPass::kForward, ff::DType::kFloat16, 96, kSm80); }, kInvalid,
               "kind.head_dim: expected 64, 128 or 256, got 96");
  expect_error([&] { load(ff::KernelPass::kForward, ff::DType::kFloat16, 128, ff::Backend::kAuto); }, kInvalid,
               "kind.family: expected Backend::kSm80 or Backend::kSm90 (the kernels the cubin was linked from), got "
               "kAuto");
  expect_error([&] { load(ff::KernelPass::kBackward, ff::DType::kBFloat16, 256, kSm90); }, kUnsupported,
               "kind.head_dim: the linked sm90 backward is built for head dims 64 and 128 (the sm90 backward's), got "
               "256; the sm80 family has 256");
}

TEST(LinkedKernel, NoBuildHasTheAutomaticFamily) {
  EXPECT_FALSE(ff::has_linked_kernels(ff::Backend::kAuto));  // a cubin is linked from one family
}

TEST(LinkedKernel, ScoreModLinkedKeepsItsTensors) {
  ff::HookTensor t;
  t.data = kElf;
  t.size[0] = 3;
  t.stride[0] = 1;
  t.dtype = 2;
  const ff::ScoreMod mod = ff::ScoreMod::linked(kElf, &t, 1);
  EXPECT_EQ(mod.kind, ff::ScoreModKind::kLinked);
  EXPECT_EQ(mod.linked_kernel, static_cast<const void*>(kElf));
  ASSERT_EQ(mod.num_hook_tensors, 1);
  EXPECT_EQ(mod.hook_tensors[0].data, static_cast<const void*>(kElf));
  EXPECT_EQ(mod.hook_tensors[0].size[0], 3);
  EXPECT_EQ(mod.hook_tensors[0].dtype, 2);
  EXPECT_STREQ(ff::score_mod_name(ff::ScoreModKind::kLinked), "linked");
}

TEST(LinkedKernel, RunsOnCudaTensorsOnly) {
  std::vector<float> q(2 * 64, 0.5f), out(2 * 64);
  ff::ForwardArgs a;
  a.q = ff::make_tensor(q.data(), ff::DType::kFloat32, {1, 1, 2, 64});
  a.k = a.q;
  a.v = a.q;
  a.out = ff::make_tensor(out.data(), ff::DType::kFloat32, {1, 1, 2, 64});
  a.score_mod = ff::ScoreMod::linked(kElf, nullptr, 0);
  expect_error([&] { ff::forward(a); }, kUnsupported,
               "score_mod: a linked score mod runs on CUDA tensors only, got cpu tensors");
  ff::BackwardArgs b;
  b.q = b.k = b.v = b.out = b.dout = a.q;
  b.dq = b.dk = b.dv = a.out;
  std::vector<float> lse(2);
  b.lse = ff::make_tensor(lse.data(), ff::DType::kFloat32, {1, 1, 2});
  b.score_mod = a.score_mod;
  expect_error([&] { ff::backward(b); }, kUnsupported,
               "score_mod: a linked score mod runs on CUDA tensors only, got cpu tensors");
}

}  // namespace
