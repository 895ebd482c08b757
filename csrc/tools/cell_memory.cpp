#include "tools/cell_memory.h"

#include <stdexcept>

namespace ssm_tools {

CellMemory::CellMemory(std::string name, int num_pointers, int64_t max_cells, bool writable)
    : name_(std::move(name)), max_cells_(max_cells), writable_(writable) {
  if (num_pointers < 1 || num_pointers > tok::kMaxPointers)
    throw std::invalid_argument(name_ + ": num_pointers must be in 1.." +
                                std::to_string(tok::kMaxPointers) + ", got " +
                                std::to_string(num_pointers));
  if (max_cells < 1)
    throw std::invalid_argument(name_ + ": max_cells must be >= 1, got " + std::to_string(max_cells));
  positions_.assign(num_pointers, 0);
}

void CellMemory::reset(uint64_t /*seed*/) {
  cells_.clear();
  positions_.assign(positions_.size(), 0);
  dropped_ = 0;
}

void CellMemory::observe(Token t) {
  if (static_cast<int64_t>(cells_.size()) < max_cells_)
    cells_.push_back(t);
  else
    ++dropped_;
}

bool CellMemory::accepts(const Tokens& command) const {
  if (command.empty() || !tok::is_pointer_cmd(command[0])) return false;
  if (tok::pointer_of(command[0]) >= num_pointers()) return false;
  return tok::op_of(command[0]) != tok::kWrite || writable_;
}

Tokens CellMemory::call(const Tokens& command) {
  // A command this tool does not accept is answered, not raised (the model produced it).
  if (!accepts(command)) return {tok::ERR};
  return run(command);
}

Tokens CellMemory::run(const Tokens& command) {
  const tok::PointerOp op = tok::op_of(command[0]);
  const size_t expected_len = op == tok::kWrite ? 2 : 1;
  if (command.size() != expected_len) return {tok::ERR};
  int64_t& pos = positions_[tok::pointer_of(command[0])];
  const int64_t size = static_cast<int64_t>(cells_.size());
  switch (op) {
    case tok::kRead:
      return {pos < size ? cells_[pos] : tok::BLANK};
    case tok::kLeft:
      if (pos == 0) return {tok::ERR};
      --pos;
      return {};
    case tok::kRight:
      if (pos >= size) return {tok::ERR};
      ++pos;
      return {};
    case tok::kWrite: {
      const Token symbol = command[1];
      if (!tok::is_char(symbol) && symbol != tok::BLANK) return {tok::ERR};
      if (pos < size) {
        cells_[pos] = symbol;
      } else if (size < max_cells_) {
        cells_.push_back(symbol);
      } else {
        return {tok::ERR};
      }
      return {};
    }
  }
  return {tok::ERR};
}

std::string CellMemory::dump() const {
  // A window of cells around each pointer, the cell under the pointer in <>; bounded in size.
  constexpr int64_t kRadius = 8;
  std::string out = name_ + ": " + std::to_string(cells_.size()) + " cells";
  if (dropped_ > 0) out += " (" + std::to_string(dropped_) + " tokens dropped: max_cells reached)";
  const int64_t size = static_cast<int64_t>(cells_.size());
  for (int p = 0; p < num_pointers(); ++p) {
    const int64_t pos = positions_[p];
    out += "\n  p" + std::to_string(p + 1) + " @ " + std::to_string(pos) + ": ";
    if (pos - kRadius > 0) out += "...";
    for (int64_t i = std::max<int64_t>(0, pos - kRadius); i <= std::min(size, pos + kRadius); ++i) {
      const Token t = i < size ? cells_[i] : tok::BLANK;
      const std::string cell = t == tok::NEWLINE ? "\\n" : token_name(t);  // one dump line per pointer
      out += i == pos ? "<" + cell + ">" : cell;
    }
    if (pos + kRadius < size) out += "...";
  }
  return out;
}

}  // namespace ssm_tools
