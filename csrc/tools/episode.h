// One episode of the dispatch loop: the protocol parser, the queue of forced tokens (prompt, then tool
// answers) and the transcript (every token the model consumes, and whether the model generated it).
#pragma once
#include <memory>
#include <vector>

#include "tools/protocol.h"

namespace ssm_tools {

class Episode {
 public:
  Episode(std::vector<std::shared_ptr<Tool>> tools, ProtocolLimits limits, int64_t max_len);

  // Start on `prompt` (non-empty, valid tokens: the Env checks). Returns the first input token.
  Token reset(const Tokens& prompt, uint64_t seed);

  // The token the model consumes next: the next forced token if one is queued (`sampled` is then
  // discarded), otherwise `sampled` itself, which is parsed. [PAD] once done. *forced says which.
  Token step(Token sampled, bool* forced);

  // Room for `tokens` transcript tokens up front (a hint; the transcript grows past it as needed).
  void reserve(size_t tokens) {
    tokens_.reserve(tokens);
    generated_.reserve(tokens);
  }

  bool done() const { return done_; }
  // Whether the next step() uses the model's sample (no forced token queued, not done).
  bool wants_sample() const { return !done_ && next_forced_ == forced_.size(); }

  const Tokens& tokens() const { return tokens_; }
  const std::vector<uint8_t>& generated() const { return generated_; }
  const ProtocolParser& parser() const { return parser_; }

 private:
  void append(Token t, bool generated);

  ProtocolParser parser_;
  int64_t max_len_;
  Tokens forced_;           // queued forced tokens; forced_[next_forced_..] are still to come
  size_t next_forced_ = 0;
  Tokens tokens_;
  std::vector<uint8_t> generated_;
  bool done_ = true;
};

}  // namespace ssm_tools
