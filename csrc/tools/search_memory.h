// Line-structured memory over the episode's context, searched with a text call:
//   [CALL] find <x> [/CALL]  ->  [RESULT] every memory line containing x as a whole word, joined by
//                                 '\n' (empty if none) [/RESULT]
// "Whole word": the characters just before and after the match are not letters, digits or '_'
// (or the match touches the line's edge), so `find v6` does not match "v630".
// Memory is the prompt and every thought/output token (observe), split at '\n'; the line being written
// is searchable too. Bounds: at most max_lines lines are kept (later tokens are dropped) and a line keeps
// at most max_response_tokens tokens (a longer line could never be returned whole). An answer holds the
// earliest matching lines that fit in max_response_tokens.
#pragma once
#include <string>
#include <vector>

#include "tools/tool.h"

namespace ssm_tools {

class SearchMemory : public Tool {
 public:
  // Also the defaults of the registry (ToolSpec options) and of the Python constructor.
  static constexpr int64_t kDefaultMaxLines = int64_t{1} << 16;
  static constexpr int64_t kDefaultMaxResponseTokens = 4096;
  explicit SearchMemory(int64_t max_lines = kDefaultMaxLines, int64_t max_response_tokens = kDefaultMaxResponseTokens);

  std::string name() const override { return "search_memory"; }
  void reset(uint64_t seed) override;
  void observe(Token t) override;
  bool accepts(const Tokens& command) const override;
  Tokens call(const Tokens& command) override;
  std::string dump() const override;

  const std::vector<Tokens>& lines() const { return lines_; }

 private:
  bool contains_word(const Tokens& line, const Tokens& word) const;

  int64_t max_lines_;
  int64_t max_response_tokens_;
  std::vector<Tokens> lines_;  // the last one is the line being written
  int64_t dropped_ = 0;
  bool full_ = false;  // max_lines reached: everything after is dropped
};

}  // namespace ssm_tools
