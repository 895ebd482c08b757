// The protocol parser: one per episode, a state machine over the model's tokens that keeps the
// episode's memory fed (Tool::observe) and routes commands to the tool that accepts them.
//
// States and transitions (t = the model's token):
//   text    t is a thought/output ([ANS], '\n', a character): it enters memory (every tool observes it)
//           t is a pointer command: routed as {t}; its answer ([BLANK]/a cell/[ERR]/nothing) is forced
//           t is a pointer write: go to `symbol` (the next model token is the symbol to write)
//           t is [CALL]: go to `call`
//           t is any other protocol token ([PAD] [BOS] [ERR] [BLANK] [/CALL] [RESULT] [/RESULT] or a
//             reserved id): out of place, answered [ERR], not stored
//   call    a character or '\n' is buffered; more than max_call_tokens of them: answered
//             [RESULT][ERR]call too long[/RESULT], back to `text`
//           [/CALL]: the buffer is routed as a text call, answered [RESULT] <answer> [/RESULT]
//           ([RESULT][ERR]unknown command: <word>[/RESULT] if no tool accepts it); back to `text`
//           any other token: [RESULT][ERR]malformed call[/RESULT], back to `text`
//   symbol  t is routed as {write, t} (the tool judges the symbol); back to `text`
//   [EOS] in any state ends the episode (it enters memory like [ANS]).
// Tool answers are checked: a token outside the vocabulary or an answer longer than
// max_answer_tokens is replaced by an error answer, so a faulty (e.g. Python) tool cannot feed the
// model garbage.
#pragma once
#include <memory>
#include <vector>

#include "tools/tool.h"

namespace ssm_tools {

struct ProtocolLimits {
  int64_t max_call_tokens = 4096;        // tokens between [CALL] and [/CALL]
  int64_t max_answer_tokens = 1 << 16;  // tokens of one tool answer
};

class ProtocolParser {
 public:
  ProtocolParser(std::vector<std::shared_ptr<Tool>> tools, ProtocolLimits limits);

  // Start an episode: reset every tool (tool j gets a seed derived from `seed` and j) and let them
  // observe the prompt.
  void reset(const Tokens& prompt, uint64_t seed);

  // Parse one model token; append the forced answer it triggers (if any) to *answer. Returns true
  // when the token ends the episode ([EOS]).
  bool feed(Token t, Tokens* answer);

  const std::vector<std::shared_ptr<Tool>>& tools() const { return tools_; }

 private:
  enum class State { kText, kCall, kSymbol };

  void observe(Token t);
  void route_pointer(const Tokens& command, Tokens* answer);
  void route_text(Tokens* answer);
  Tool* find_tool(const Tokens& command) const;
  bool valid_answer(const Tokens& answer) const;

  std::vector<std::shared_ptr<Tool>> tools_;
  ProtocolLimits limits_;
  State state_ = State::kText;
  Tokens call_;             // the text call being written
  Tokens command_;          // the pointer command being routed
  Token pending_write_ = 0;  // the write command awaiting its symbol
};

// A well-mixed 64-bit seed from (seed, index): episodes and tools get distinct, reproducible seeds.
uint64_t mix_seed(uint64_t seed, uint64_t index);

}  // namespace ssm_tools
