// C++ tools by name, so that Python (ToolSpec("pointer_memory", num_pointers=2)) and configs can ask
// for a tool without holding a Python object per episode. Built-in: pointer_memory, tape_memory,
// search_memory, calculator. Other C++ tools (the coding sandbox) register themselves at module load.
#pragma once
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "tools/env.h"

namespace ssm_tools {

using ToolOption = std::variant<int64_t, std::string>;

// The options of one spec; each getter marks its option used, and finish() rejects unknown ones
// (a typo in a config must not silently fall back to a default).
class ToolOptions {
 public:
  ToolOptions(std::string tool, std::map<std::string, ToolOption> values)
      : tool_(std::move(tool)), values_(std::move(values)) {}
  int64_t get_int(const std::string& key, int64_t fallback);
  std::string get_string(const std::string& key, const std::string& fallback);
  void finish() const;

 private:
  std::string tool_;
  std::map<std::string, ToolOption> values_;
  std::vector<std::string> used_;
};

// Reads its options and returns a factory of instances configured with them.
using ToolBuilder = std::function<ToolFactory(ToolOptions&)>;

void register_tool(const std::string& name, ToolBuilder builder);
std::vector<std::string> registered_tools();

// Throws std::invalid_argument for an unknown name, unknown option or bad option value.
ToolFactory make_tool_factory(const std::string& name, const std::map<std::string, ToolOption>& options);

}  // namespace ssm_tools
