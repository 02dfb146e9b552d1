// flashflex::Error: the one exception type of the library. Every failure (bad argument,
// unsupported configuration, CUDA error) is reported through it; nothing exits.
#pragma once

#include <stdexcept>
#include <string>

namespace flashflex {

enum class ErrorKind {
  kInvalidArgument,  // an argument is wrong (shape, dtype, pointer, ...): Python ValueError
  kUnsupported,      // valid but not implemented/built (head dim, backend): NotImplementedError
  kCuda,             // a CUDA runtime call or launch failed: RuntimeError
  kInternal,         // a broken invariant of the library itself: RuntimeError
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

}  // namespace flashflex
