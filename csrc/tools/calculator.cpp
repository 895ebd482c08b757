#include "tools/calculator.h"

#include <algorithm>
#include <stdexcept>

#include "tools/text.h"

namespace ssm_tools {
namespace {

const std::string kCommand = "add";

bool is_number(const std::string& s, int64_t max_digits) {
  return !s.empty() && static_cast<int64_t>(s.size()) <= max_digits &&
         std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

}  // namespace

std::string add_decimal(const std::string& a, const std::string& b) {
  std::string sum;
  sum.reserve(std::max(a.size(), b.size()) + 1);
  int carry = 0;
  for (size_t i = 0; i < std::max(a.size(), b.size()) || carry; ++i) {
    const int da = i < a.size() ? a[a.size() - 1 - i] - '0' : 0;
    const int db = i < b.size() ? b[b.size() - 1 - i] - '0' : 0;
    const int d = da + db + carry;
    sum.push_back(static_cast<char>('0' + d % 10));
    carry = d / 10;
  }
  while (sum.size() > 1 && sum.back() == '0') sum.pop_back();
  std::reverse(sum.begin(), sum.end());
  return sum;
}

Calculator::Calculator(int64_t max_digits) : max_digits_(max_digits) {
  if (max_digits < 1)
    throw std::invalid_argument("calculator: max_digits must be >= 1, got " + std::to_string(max_digits));
}

bool Calculator::accepts(const Tokens& command) const { return is_text_command(command, kCommand); }

Tokens Calculator::call(const Tokens& command) {
  ++calls_;
  std::string text;
  if (!accepts(command) || !tokens_to_text(command, &text)) return error_answer("usage: add <a> <b>");
  // Exactly "add <a> <b>" with single spaces.
  const size_t first = text.find(' ');
  const size_t second = text.find(' ', first + 1);
  if (first == std::string::npos || second == std::string::npos) return error_answer("usage: add <a> <b>");
  const std::string a = text.substr(first + 1, second - first - 1);
  const std::string b = text.substr(second + 1);
  if (!is_number(a, max_digits_) || !is_number(b, max_digits_))
    return error_answer("usage: add <a> <b> (non-negative integers of at most " +
                        std::to_string(max_digits_) + " digits)");
  return text_to_tokens(add_decimal(a, b));
}

std::string Calculator::dump() const {
  return "calculator: " + std::to_string(calls_) + " calls, max_digits " + std::to_string(max_digits_);
}

}  // namespace ssm_tools
