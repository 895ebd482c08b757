// The one token vocabulary of ssm-tools. Python reads it from here (ssm_tools._tools.vocab(),
// wrapped by python/ssm_tools/vocab.py); nothing else defines token ids.
//
// Layout (ids are stable; change them only with a version bump of every checkpoint):
//   0..9     control tokens
//   10..25   pointer-memory commands, 4 pointers x {read, left, right, write}
//   26       '\n'
//   27..121  printable ASCII ' ' (32) .. '~' (126), one token per character
//   122..127 reserved
//
// Grammar (the full state machine: csrc/tools/protocol.h; for Python users: python/ssm_tools/env.py):
//   * A pointer command is one model token; a read is answered by one forced observation token
//     (the token under the pointer, [BLANK] past the end of memory, [ERR] on a bad command).
//     Moves are answered only on error ([ERR]). A write is followed by one model token, the symbol
//     (a character or [BLANK]), and is answered like a move.
//   * A text tool call is  [CALL] <command> <args...> [/CALL]  emitted by the model (characters and
//     '\n' only); the answer is forced:  [RESULT] <text> [/RESULT] ; an error answer is
//     [RESULT] [ERR] <message> [/RESULT].
//   * Characters, '\n' and [ANS] the model emits are thoughts (before [ANS]) or outputs (after [ANS]);
//     they enter the episode's memory, as do prompt tokens. Commands, call text, write symbols and
//     answers never do. Other control tokens emitted out of place are answered [ERR].
//   * The model ends an episode with [EOS] (in any parser state; [EOS] enters memory too).
#pragma once
#include <cstdint>
#include <string>

namespace ssm_tools {

using Token = int32_t;

namespace tok {
constexpr Token PAD = 0;         // padding after an episode ended
constexpr Token BOS = 1;         // first prompt token
constexpr Token EOS = 2;         // model ends the episode
constexpr Token ANS = 3;         // separates thoughts (before) from outputs (after)
constexpr Token ERR = 4;         // error answer from a tool or the parser
constexpr Token BLANK = 5;       // read of an empty cell / past the end of memory
constexpr Token CALL = 6;        // opens a text tool call
constexpr Token CALL_END = 7;    // closes it
constexpr Token RESULT = 8;      // opens a tool's text answer (forced)
constexpr Token RESULT_END = 9;  // closes it

constexpr int kMaxPointers = 4;
constexpr int kPointerOps = 4;   // read, left, right, write
enum PointerOp : int { kRead = 0, kLeft = 1, kRight = 2, kWrite = 3 };
constexpr Token POINTER_BASE = 10;
constexpr Token pointer_cmd(int pointer, PointerOp op) {  // pointer is 0-based
  return POINTER_BASE + pointer * kPointerOps + op;
}
constexpr Token POINTER_END = POINTER_BASE + kMaxPointers * kPointerOps;  // 26, exclusive
constexpr bool is_pointer_cmd(Token t) { return t >= POINTER_BASE && t < POINTER_END; }
constexpr int pointer_of(Token t) { return (t - POINTER_BASE) / kPointerOps; }
constexpr PointerOp op_of(Token t) { return static_cast<PointerOp>((t - POINTER_BASE) % kPointerOps); }

constexpr Token NEWLINE = 26;
constexpr Token CHAR_BASE = 27;  // token of ' '
constexpr Token CHAR_END = CHAR_BASE + 95;  // 122, exclusive
constexpr int kVocabSize = 128;

constexpr bool is_char(Token t) { return t == NEWLINE || (t >= CHAR_BASE && t < CHAR_END); }
// -1 if c has no token (non-printable, non-ASCII).
constexpr Token from_char(char c) {
  return c == '\n' ? NEWLINE : (c >= 32 && c <= 126 ? CHAR_BASE + (c - 32) : -1);
}
constexpr char to_char(Token t) { return t == NEWLINE ? '\n' : static_cast<char>(32 + (t - CHAR_BASE)); }
}  // namespace tok

// Readable name of any token: the character itself, or "[NAME]" for control and command tokens
// ("[p1.read]", "[p2.left]", ...). Unknown ids give "[?id]".
std::string token_name(Token t);

}  // namespace ssm_tools
