// DLLM_CHECK: TORCH_CHECK whose message is built without iostreams.
//
// Why: TORCH_CHECK with several message arguments formats them through a std::ostringstream
// instantiated inside this library.  Built with the GPU machine's toolchain (g++ 13, torch
// 2.11+cu130) that path crashed with SIGSEGV in ostream::_M_insert<long> instead of raising, so
// every bad-input error became a segfault.  Handing TORCH_CHECK one std::string takes c10's
// stream-free path (c10::str of a single std::string returns it as is).
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <string>
#include <string_view>
#include <type_traits>

namespace dllm_core {

inline std::string msg_piece(const char* s) { return s; }
inline std::string msg_piece(const std::string& s) { return s; }
inline std::string msg_piece(c10::ScalarType t) { return c10::toString(t); }
inline std::string msg_piece(const c10::Device& d) { return d.str(); }
inline std::string msg_piece(std::string_view s) { return std::string(s); }
inline std::string msg_piece(c10::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + "]";
}
template <typename T, typename = std::enable_if_t<std::is_arithmetic_v<T>>>
std::string msg_piece(T v) { return std::to_string(v); }

template <typename... Args>
std::string message(const Args&... args) {
  std::string s;
  (s.append(msg_piece(args)), ...);
  return s;
}

}  // namespace dllm_core

#define DLLM_CHECK(cond, ...) TORCH_CHECK(cond, ::dllm_core::message(__VA_ARGS__))
