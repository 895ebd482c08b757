#include "tools/vocab.h"

namespace ssm_tools {

std::string token_name(Token t) {
  static const char* kControl[] = {"[PAD]",  "[BOS]",  "[EOS]",    "[ANS]",    "[ERR]",
                                   "[BLANK]", "[CALL]", "[/CALL]", "[RESULT]", "[/RESULT]"};
  static const char* kOps[] = {"read", "left", "right", "write"};
  if (t >= 0 && t < tok::POINTER_BASE) return kControl[t];
  if (tok::is_pointer_cmd(t))
    return "[p" + std::to_string(tok::pointer_of(t) + 1) + "." + kOps[tok::op_of(t)] + "]";
  if (tok::is_char(t)) return std::string(1, tok::to_char(t));
  return "[?" + std::to_string(t) + "]";
}

}  // namespace ssm_tools
