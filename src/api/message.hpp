// Error-message formatting without iostreams. The Python module may carry a static copy of
// libstdc++ (the GPU machine's compiler links it so) next to the one torch loaded, and
// std::ostream's locale state then crashed there; std::to_string and snprintf do not touch it.
#pragma once

#include <cstdio>
#include <string>
#include <type_traits>

namespace flashflex::detail {

inline std::string to_text(const std::string& s) { return s; }
inline std::string to_text(const char* s) { return s; }
inline std::string to_text(char c) { return std::string(1, c); }
inline std::string to_text(double v) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%g", v);
  return buffer;
}
template <typename T, typename = std::enable_if_t<std::is_integral_v<T>>>
std::string to_text(T v) {
  return std::to_string(v);
}

// The concatenation of parts, each formatted by to_text.
template <typename... Parts>
std::string concat(const Parts&... parts) {
  std::string out;
  (out += ... += to_text(parts));
  return out;
}

}  // namespace flashflex::detail
