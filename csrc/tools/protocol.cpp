#include "tools/protocol.h"

#include <stdexcept>

#include "tools/text.h"

namespace ssm_tools {
namespace {

// Longest command word quoted back in an "unknown command" answer.
constexpr size_t kQuotedWordMax = 32;

void append_text_answer(const Tokens& body, Tokens* answer) {
  answer->push_back(tok::RESULT);
  answer->insert(answer->end(), body.begin(), body.end());
  answer->push_back(tok::RESULT_END);
}

bool is_memory_token(Token t) { return tok::is_char(t) || t == tok::ANS || t == tok::EOS; }

}  // namespace

uint64_t mix_seed(uint64_t seed, uint64_t index) {
  // splitmix64 finalizer over the pair.
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (index + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

ProtocolParser::ProtocolParser(std::vector<std::shared_ptr<Tool>> tools, ProtocolLimits limits)
    : tools_(std::move(tools)), limits_(limits) {
  if (limits.max_call_tokens < 1)
    throw std::invalid_argument("max_call_tokens must be >= 1, got " + std::to_string(limits.max_call_tokens));
  if (limits.max_answer_tokens < 16)
    throw std::invalid_argument("max_answer_tokens must be >= 16, got " +
                                std::to_string(limits.max_answer_tokens));
}

void ProtocolParser::reset(const Tokens& prompt, uint64_t seed) {
  for (size_t j = 0; j < tools_.size(); ++j) tools_[j]->reset(mix_seed(seed, j));
  state_ = State::kText;
  call_.clear();
  for (Token t : prompt) observe(t);
}

void ProtocolParser::observe(Token t) {
  for (auto& tool : tools_) tool->observe(t);
}

bool ProtocolParser::feed(Token t, Tokens* answer) {
  if (t == tok::EOS) {
    observe(t);
    state_ = State::kText;
    return true;
  }
  switch (state_) {
    case State::kText:
      if (tok::is_pointer_cmd(t) && tok::op_of(t) == tok::kWrite) {
        pending_write_ = t;
        state_ = State::kSymbol;
      } else if (tok::is_pointer_cmd(t)) {
        command_.assign(1, t);  // a member buffer: no allocation per command (the replay hot path)
        route_pointer(command_, answer);
      } else if (t == tok::CALL) {
        call_.clear();
        state_ = State::kCall;
      } else if (is_memory_token(t)) {
        observe(t);
      } else {
        answer->push_back(tok::ERR);
      }
      break;
    case State::kCall:
      if (t == tok::CALL_END) {
        route_text(answer);
        state_ = State::kText;
      } else if (!tok::is_char(t)) {
        append_text_answer(error_answer("malformed call: " + token_name(t) + " inside [CALL]"), answer);
        state_ = State::kText;
      } else if (static_cast<int64_t>(call_.size()) >= limits_.max_call_tokens) {
        append_text_answer(error_answer("call too long (max " + std::to_string(limits_.max_call_tokens) +
                                        " tokens)"), answer);
        state_ = State::kText;
      } else {
        call_.push_back(t);
      }
      break;
    case State::kSymbol:
      command_.assign({pending_write_, t});
      route_pointer(command_, answer);
      state_ = State::kText;
      break;
  }
  return false;
}

Tool* ProtocolParser::find_tool(const Tokens& command) const {
  for (const auto& tool : tools_)
    if (tool->accepts(command)) return tool.get();
  return nullptr;
}

bool ProtocolParser::valid_answer(const Tokens& answer) const {
  if (static_cast<int64_t>(answer.size()) > limits_.max_answer_tokens) return false;
  for (Token t : answer)
    if (t < 0 || t >= tok::kVocabSize) return false;
  return true;
}

void ProtocolParser::route_pointer(const Tokens& command, Tokens* answer) {
  Tool* tool = find_tool(command);
  Tokens out = tool ? tool->call(command) : Tokens{tok::ERR};
  if (!valid_answer(out)) out = {tok::ERR};
  answer->insert(answer->end(), out.begin(), out.end());
}

void ProtocolParser::route_text(Tokens* answer) {
  Tool* tool = find_tool(call_);
  Tokens out;
  if (tool == nullptr) {
    std::string text;
    tokens_to_text(call_, &text);
    out = error_answer("unknown command: " + first_word(text).substr(0, kQuotedWordMax));
  } else {
    out = tool->call(call_);
    if (!valid_answer(out)) out = error_answer("invalid answer from tool " + tool->name());
  }
  append_text_answer(out, answer);
}

}  // namespace ssm_tools
