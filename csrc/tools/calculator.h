// The single-turn calculator of the paper's ablation: [CALL] add <a> <b> [/CALL] answers the decimal
// sum of two non-negative integers of any length up to max_digits digits each (no leading '+'/'-').
// Anything else answers [ERR]usage: add <a> <b>.
#pragma once
#include <string>

#include "tools/tool.h"

namespace ssm_tools {

class Calculator : public Tool {
 public:
  static constexpr int64_t kDefaultMaxDigits = 1 << 16;  // also the registry's and Python's default
  explicit Calculator(int64_t max_digits = kDefaultMaxDigits);

  std::string name() const override { return "calculator"; }
  void reset(uint64_t /*seed*/) override { calls_ = 0; }
  bool accepts(const Tokens& command) const override;
  Tokens call(const Tokens& command) override;
  std::string dump() const override;

 private:
  int64_t max_digits_;
  int64_t calls_ = 0;  // this episode; shown by dump()
};

// Decimal sum of two digit strings (no sign, leading zeros allowed), without leading zeros.
std::string add_decimal(const std::string& a, const std::string& b);

}  // namespace ssm_tools
