// The one kernel table of the CUDA backend: every compiled kernel under its key
// (architecture x dtype x head dim x score mod x row-local variant), built from the closed set of
// src/kernel_set.hpp by make_kernel_rows, and one lookup that names what was asked for and what
// exists. forward.cu, backward.cu and eagle3.cu each hold their table of launchers; the kernels live
// in the architecture folders (sm80/, sm90/). Nothing here includes CUDA headers.
#pragma once

#include <array>
#include <cstddef>
#include <string>
#include <utility>

#include "api/message.hpp"
#include "flashflex/attention.hpp"
#include "flashflex/error.hpp"
#include "kernel_set.hpp"

namespace flashflex::cuda {

// Kernel families: kSm80, the portable mma.sync kernels (compute capability 8.0 and newer);
// kSm90, the Hopper kernels (wgmma, TMA; sm_90a code, compute capability 9.x only).
enum class Arch { kSm80, kSm90 };

inline const char* arch_name(Arch a) { return a == Arch::kSm90 ? "sm90" : "sm80"; }

struct KernelKey {
  Arch arch = Arch::kSm80;
  DType dtype = DType::kBFloat16;
  int head_dim = 0;
  ScoreModKind mod = ScoreModKind::kNone;
  bool row_local = false;  // the EAGLE3 variant (RowLocalKeys, cuda/params.hpp)

  constexpr bool operator==(const KernelKey& o) const {
    return arch == o.arch && dtype == o.dtype && head_dim == o.head_dim && mod == o.mod && row_local == o.row_local;
  }
};

template <class Launch>
struct KernelEntry {
  KernelKey key;
  Launch launch;
};

// Row<kDType, kHeadDim, kMod>::entry() for every combination of the kernel set, dtype slowest.
template <class Launch, template <DType, int, ScoreModKind> class Row, std::size_t... I>
constexpr std::array<KernelEntry<Launch>, sizeof...(I)> make_kernel_rows_impl(std::index_sequence<I...>) {
  return {{Row<kKernelDTypes[I / (kNumKernelHeadDims * kNumKernelMods)],
               kKernelHeadDims[(I / kNumKernelMods) % kNumKernelHeadDims], kKernelMods[I % kNumKernelMods]>::entry()...}};
}

template <class Launch, template <DType, int, ScoreModKind> class Row>
constexpr auto make_kernel_rows() {
  return make_kernel_rows_impl<Launch, Row>(
      std::make_index_sequence<kNumKernelDTypes * kNumKernelHeadDims * kNumKernelMods>{});
}

template <class Launch, std::size_t N, std::size_t M>
constexpr std::array<KernelEntry<Launch>, N + M> join(const std::array<KernelEntry<Launch>, N>& a,
                                                      const std::array<KernelEntry<Launch>, M>& b) {
  std::array<KernelEntry<Launch>, N + M> out{};
  for (std::size_t i = 0; i < N; ++i) out[i] = a[i];
  for (std::size_t i = 0; i < M; ++i) out[N + i] = b[i];
  return out;
}

// A family may build only part of the set: its Row leaves the launch of the other keys null.
template <class Launch, std::size_t N>
constexpr std::size_t count_built(const std::array<KernelEntry<Launch>, N>& rows) {
  std::size_t n = 0;
  for (const KernelEntry<Launch>& e : rows) n += e.launch != nullptr ? 1 : 0;
  return n;
}

// The rows of `rows` with a launch (M = count_built(rows)).
template <std::size_t M, class Launch, std::size_t N>
constexpr std::array<KernelEntry<Launch>, M> built_rows(const std::array<KernelEntry<Launch>, N>& rows) {
  std::array<KernelEntry<Launch>, M> out{};
  std::size_t n = 0;
  for (const KernelEntry<Launch>& e : rows) {
    if (e.launch != nullptr) out[n++] = e;
  }
  return out;
}

inline std::string describe(const KernelKey& k) {
  return flashflex::detail::concat("(", arch_name(k.arch), ", ", dtype_name(k.dtype), ", head_dim ", k.head_dim,
                                   ", score_mod ", score_mod_name(k.mod), k.row_local ? ", EAGLE3 row-local" : "",
                                   ")");
}

// The entry of `key`, or Error(kUnsupported) naming the key and listing the table's keys.
// `pass` names the table in the message ("forward", "backward").
template <class Launch, std::size_t N>
const KernelEntry<Launch>& find_kernel(const std::array<KernelEntry<Launch>, N>& table, const KernelKey& key,
                                       const char* pass) {
  for (const KernelEntry<Launch>& e : table) {
    if (e.key == key) return e;
  }
  std::string built;
  for (const KernelEntry<Launch>& e : table) built += " " + describe(e.key);
  throw Error(ErrorKind::kUnsupported, flashflex::detail::concat("q: no CUDA ", pass, " kernel for ", describe(key),
                                                                 "; built:", built));
}

// The entry that serves `key` on a device whose preferred family is `arch` (select_arch,
// device_info.hpp): that family's kernel if built; with Backend::kAuto, else the sm80 kernel.
template <class Launch, std::size_t N>
const KernelEntry<Launch>& select_kernel(const std::array<KernelEntry<Launch>, N>& table, KernelKey key, Arch arch,
                                         Backend requested, const char* pass) {
  key.arch = arch;
  if (arch != Arch::kSm80 && requested == Backend::kAuto) {
    for (const KernelEntry<Launch>& e : table) {
      if (e.key == key) return e;
    }
    key.arch = Arch::kSm80;
  }
  return find_kernel(table, key, pass);
}

}  // namespace flashflex::cuda
