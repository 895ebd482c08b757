#include "tools/search_memory.h"

#include <algorithm>
#include <cctype>
#include <stdexcept>

#include "tools/text.h"

namespace ssm_tools {
namespace {

const std::string kCommand = "find";

bool is_word_token(Token t) {
  if (!tok::is_char(t)) return false;
  const char c = tok::to_char(t);
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
}

}  // namespace

SearchMemory::SearchMemory(int64_t max_lines, int64_t max_response_tokens)
    : max_lines_(max_lines), max_response_tokens_(max_response_tokens) {
  if (max_lines < 1)
    throw std::invalid_argument("search_memory: max_lines must be >= 1, got " + std::to_string(max_lines));
  if (max_response_tokens < 16)
    throw std::invalid_argument("search_memory: max_response_tokens must be >= 16, got " +
                                std::to_string(max_response_tokens));
  reset(0);
}

void SearchMemory::reset(uint64_t /*seed*/) {
  lines_.assign(1, Tokens{});
  dropped_ = 0;
  full_ = false;
}

void SearchMemory::observe(Token t) {
  if (full_) {
    ++dropped_;
  } else if (t == tok::NEWLINE) {
    if (static_cast<int64_t>(lines_.size()) < max_lines_)
      lines_.emplace_back();
    else
      full_ = true;
  } else if (static_cast<int64_t>(lines_.back().size()) < max_response_tokens_) {
    lines_.back().push_back(t);
  } else {
    ++dropped_;
  }
}

bool SearchMemory::accepts(const Tokens& command) const { return is_text_command(command, kCommand); }

bool SearchMemory::contains_word(const Tokens& line, const Tokens& word) const {
  for (auto it = line.begin();; ++it) {
    it = std::search(it, line.end(), word.begin(), word.end());
    if (it == line.end()) return false;
    const auto end = it + word.size();
    const bool starts = it == line.begin() || !is_word_token(*(it - 1)) || !is_word_token(word.front());
    const bool ends = end == line.end() || !is_word_token(*end) || !is_word_token(word.back());
    if (starts && ends) return true;
  }
}

Tokens SearchMemory::call(const Tokens& command) {
  if (!accepts(command) || command.size() < kCommand.size() + 2)
    return error_answer("usage: find <word>");
  const Tokens word(command.begin() + kCommand.size() + 1, command.end());
  Tokens answer;
  for (const Tokens& line : lines_) {
    if (line.empty() || !contains_word(line, word)) continue;
    const size_t separator = answer.empty() ? 0 : 1;
    if (static_cast<int64_t>(answer.size() + separator + line.size()) > max_response_tokens_) break;
    if (separator) answer.push_back(tok::NEWLINE);
    answer.insert(answer.end(), line.begin(), line.end());
  }
  return answer;
}

std::string SearchMemory::dump() const {
  // The last few lines: enough to see what the model wrote lately, bounded in size.
  constexpr size_t kShown = 8;
  std::string out = "search_memory: " + std::to_string(lines_.size()) + " lines";
  if (dropped_ > 0) out += " (" + std::to_string(dropped_) + " tokens dropped: limits reached)";
  for (size_t i = lines_.size() > kShown ? lines_.size() - kShown : 0; i < lines_.size(); ++i) {
    out += "\n  " + std::to_string(i) + ": ";
    for (Token t : lines_[i]) out += token_name(t);
  }
  return out;
}

}  // namespace ssm_tools
