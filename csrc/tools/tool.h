// The interface every tool implements (C++ tools here, Python tools through the pybind11
// trampoline in csrc/bindings/). One episode owns one instance of each of its tools.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "tools/vocab.h"

namespace ssm_tools {

using Tokens = std::vector<Token>;

class Tool {
 public:
  virtual ~Tool() = default;

  // Short stable name ("pointer_memory", "search_memory", ...), used in configs and dumps.
  virtual std::string name() const = 0;

  // Start a new episode. Everything the tool holds is cleared; `seed` makes any randomness the
  // tool has reproducible.
  virtual void reset(uint64_t seed) = 0;

  // Every token that enters the episode's memory, in order: the prompt, then each thought and
  // output token of the model. Commands and tool answers are never observed. Default: ignore.
  virtual void observe(Token /*t*/) {}

  // Whether this tool answers `command`. A command is either a single pointer-command token, or the
  // tokens strictly between [CALL] and [/CALL] (text calls route by their first word).
  virtual bool accepts(const Tokens& command) const = 0;

  // Run `command` (one this tool accepts) and return its answer tokens. For a pointer read that is
  // exactly one token; for a move, nothing (or [ERR]); for a text call, the text between [RESULT]
  // and [/RESULT], which the loop adds. An error answer starts with [ERR]. Never throws for bad
  // model input: malformed commands are answered, not raised.
  virtual Tokens call(const Tokens& command) = 0;

  // Human-readable state for debugging (pointer positions, memory around them, files, ...).
  virtual std::string dump() const = 0;
};

}  // namespace ssm_tools
