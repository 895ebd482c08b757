// Numbers and shapes for the ops' TORCH_CHECK messages, formatted without std::ostream. On the GPU
// machine (gcc 13 there, a different libstdc++ inside torch) streaming an integer into c10::str's
// ostringstream from this library crashed (std::num_put through a foreign locale) while strings
// streamed fine; so every message streams strings only, on CPU and CUDA alike.
#pragma once

#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <string>

namespace ssm_tools {

inline std::string text(int64_t v) { return std::to_string(v); }

inline std::string text(c10::IntArrayRef sizes) {
  std::string out = "[";
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + std::to_string(sizes[i]);
  return out + "]";
}

}  // namespace ssm_tools
