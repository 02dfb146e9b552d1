// expect_error: asserts that a call throws flashflex::Error of a given kind with exactly the given
// message. Shared by the validation tests.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "flashflex/error.hpp"

inline void expect_error(const std::function<void()>& call, flashflex::ErrorKind kind, const std::string& message) {
  try {
    call();
  } catch (const flashflex::Error& e) {
    EXPECT_EQ(e.what(), message);
    EXPECT_EQ(static_cast<int>(e.kind()), static_cast<int>(kind));
    return;
  }
  ADD_FAILURE() << "expected flashflex::Error: " << message;
}
