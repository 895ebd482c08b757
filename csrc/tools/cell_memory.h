// Memories made of a row of cells with movable pointers, driven by one-token pointer commands.
//
//   PointerMemory  the paper's memory: the cells are the episode's own context (prompt, then every
//                  thought/output token, received through observe); read, move left, move right.
//   TapeMemory     the tape of Theorem 2: the same cells, plus `write` (the write command token is
//                  followed by one symbol token; the symbol replaces the cell under the pointer, or
//                  extends the tape by one cell when the pointer is one past the end).
//
// Pointers start on cell 0 and range over 0..size (size = one past the end). A read returns the cell
// under the pointer, or [BLANK] one past the end. Moves answer nothing; moving left of cell 0 or right
// of one-past-the-end answers [ERR] and leaves the pointer where it was. Anything else the tool is
// handed (a pointer it does not have, a write on PointerMemory, a bad symbol, a full tape) answers
// [ERR]. At most max_cells cells are kept; tokens observed beyond that are dropped (dump() says so).
#pragma once
#include <string>
#include <vector>

#include "tools/tool.h"

namespace ssm_tools {

class CellMemory : public Tool {
 public:
  CellMemory(std::string name, int num_pointers, int64_t max_cells, bool writable);

  std::string name() const override { return name_; }
  void reset(uint64_t seed) override;
  void observe(Token t) override;
  bool accepts(const Tokens& command) const override;
  Tokens call(const Tokens& command) override;
  std::string dump() const override;

  int num_pointers() const { return static_cast<int>(positions_.size()); }
  int64_t position(int pointer) const { return positions_.at(pointer); }
  const Tokens& cells() const { return cells_; }

 private:
  Tokens run(const Tokens& command);

  std::string name_;
  int64_t max_cells_;
  bool writable_;
  Tokens cells_;
  std::vector<int64_t> positions_;
  int64_t dropped_ = 0;  // observed tokens that did not fit in max_cells
};

// The defaults of the constructors below are also those of the registry (ToolSpec options) and of
// the Python constructors: one set, here.
constexpr int64_t kDefaultMaxCells = int64_t{1} << 20;

class PointerMemory : public CellMemory {
 public:
  static constexpr int kDefaultPointers = 2;
  explicit PointerMemory(int num_pointers = kDefaultPointers, int64_t max_cells = kDefaultMaxCells)
      : CellMemory("pointer_memory", num_pointers, max_cells, /*writable=*/false) {}
};

class TapeMemory : public CellMemory {
 public:
  static constexpr int kDefaultPointers = 1;
  explicit TapeMemory(int num_pointers = kDefaultPointers, int64_t max_cells = kDefaultMaxCells)
      : CellMemory("tape_memory", num_pointers, max_cells, /*writable=*/true) {}
};

}  // namespace ssm_tools
