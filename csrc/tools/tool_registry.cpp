#include "tools/tool_registry.h"

#include <algorithm>
#include <mutex>
#include <stdexcept>

#include "tools/calculator.h"
#include "tools/cell_memory.h"
#include "tools/search_memory.h"

namespace ssm_tools {
namespace {

template <typename T, typename... Args>
ToolFactory factory_of(Args... args) {
  T probe(args...);  // constructing once validates the options now, not inside the loop
  return [=] { return std::make_shared<T>(args...); };
}

std::map<std::string, ToolBuilder> builtin_tools() {
  return {
      {"pointer_memory",
       [](ToolOptions& o) {
         return factory_of<PointerMemory>(static_cast<int>(o.get_int("num_pointers", PointerMemory::kDefaultPointers)),
                                          o.get_int("max_cells", kDefaultMaxCells));
       }},
      {"tape_memory",
       [](ToolOptions& o) {
         return factory_of<TapeMemory>(static_cast<int>(o.get_int("num_pointers", TapeMemory::kDefaultPointers)),
                                       o.get_int("max_cells", kDefaultMaxCells));
       }},
      {"search_memory",
       [](ToolOptions& o) {
         return factory_of<SearchMemory>(o.get_int("max_lines", SearchMemory::kDefaultMaxLines),
                                         o.get_int("max_response_tokens", SearchMemory::kDefaultMaxResponseTokens));
       }},
      {"calculator",
       [](ToolOptions& o) { return factory_of<Calculator>(o.get_int("max_digits", Calculator::kDefaultMaxDigits)); }},
  };
}

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& name : names) out += (out.empty() ? "" : ", ") + name;
  return out;
}

std::mutex& registry_mutex() {
  static std::mutex mu;
  return mu;
}

std::map<std::string, ToolBuilder>& registry() {
  static std::map<std::string, ToolBuilder> tools = builtin_tools();
  return tools;
}

}  // namespace

int64_t ToolOptions::get_int(const std::string& key, int64_t fallback) {
  used_.push_back(key);
  auto it = values_.find(key);
  if (it == values_.end()) return fallback;
  if (const int64_t* v = std::get_if<int64_t>(&it->second)) return *v;
  throw std::invalid_argument(tool_ + ": option " + key + " must be an integer");
}

std::string ToolOptions::get_string(const std::string& key, const std::string& fallback) {
  used_.push_back(key);
  auto it = values_.find(key);
  if (it == values_.end()) return fallback;
  if (const std::string* v = std::get_if<std::string>(&it->second)) return *v;
  throw std::invalid_argument(tool_ + ": option " + key + " must be a string");
}

void ToolOptions::finish() const {
  for (const auto& kv : values_)
    if (std::find(used_.begin(), used_.end(), kv.first) == used_.end())
      throw std::invalid_argument(tool_ + ": unknown option " + kv.first + " (options: " + join(used_) + ")");
}

void register_tool(const std::string& name, ToolBuilder builder) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  registry()[name] = std::move(builder);
}

std::vector<std::string> registered_tools() {
  std::lock_guard<std::mutex> lock(registry_mutex());
  std::vector<std::string> names;
  for (const auto& kv : registry()) names.push_back(kv.first);
  return names;
}

ToolFactory make_tool_factory(const std::string& name, const std::map<std::string, ToolOption>& options) {
  ToolBuilder builder;
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    auto it = registry().find(name);
    if (it == registry().end()) {
      std::vector<std::string> known;
      for (const auto& kv : registry()) known.push_back(kv.first);
      throw std::invalid_argument("unknown tool '" + name + "' (known: " + join(known) + ")");
    }
    builder = it->second;
  }
  ToolOptions reader(name, options);
  ToolFactory factory = builder(reader);
  reader.finish();
  return factory;
}

}  // namespace ssm_tools
