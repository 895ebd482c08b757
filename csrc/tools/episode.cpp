#include "tools/episode.h"

namespace ssm_tools {

Episode::Episode(std::vector<std::shared_ptr<Tool>> tools, ProtocolLimits limits, int64_t max_len)
    : parser_(std::move(tools), limits), max_len_(max_len) {}

Token Episode::reset(const Tokens& prompt, uint64_t seed) {
  parser_.reset(prompt, seed);
  forced_.assign(prompt.begin() + 1, prompt.end());
  next_forced_ = 0;
  tokens_.clear();
  generated_.clear();
  done_ = false;
  append(prompt[0], /*generated=*/false);
  return prompt[0];
}

Token Episode::step(Token sampled, bool* forced) {
  *forced = false;
  if (done_) return tok::PAD;
  if (next_forced_ < forced_.size()) {
    *forced = true;
    const Token t = forced_[next_forced_++];
    append(t, /*generated=*/false);
    return t;
  }
  forced_.clear();  // all consumed: reuse the buffer for the answer this token may trigger
  next_forced_ = 0;
  const bool ended = parser_.feed(sampled, &forced_);
  append(sampled, /*generated=*/true);
  done_ = done_ || ended;
  return sampled;
}

void Episode::append(Token t, bool generated) {
  tokens_.push_back(t);
  generated_.push_back(generated ? 1 : 0);
  if (static_cast<int64_t>(tokens_.size()) >= max_len_) done_ = true;
}

}  // namespace ssm_tools
