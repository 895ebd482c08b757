// Unit tests of the C++ tools: pointer/tape edges, search, calculator, registry, the sandbox's names.
#include "tools/calculator.h"
#include "tools/cell_memory.h"
#include "tools/code_sandbox.h"
#include "tools/search_memory.h"
#include "tools/tests/check.h"
#include "tools/text.h"
#include "tools/tool_registry.h"

using namespace ssm_tools;

namespace {

Token cmd(int pointer, tok::PointerOp op) { return tok::pointer_cmd(pointer, op); }

void observe_text(Tool& tool, const std::string& text) {
  for (Token t : text_to_tokens(text)) tool.observe(t);
}

std::string answer_text(const Tokens& answer) {
  std::string out;
  for (Token t : answer) out += token_name(t);
  return out;
}

}  // namespace

TEST(pointer_memory_edges) {
  PointerMemory mem(2, 4);
  CHECK(mem.call({cmd(0, tok::kRead)}) == Tokens{tok::BLANK});
  CHECK(mem.call({cmd(0, tok::kLeft)}) == Tokens{tok::ERR});
  CHECK(mem.call({cmd(0, tok::kRight)}) == Tokens{tok::ERR});
  observe_text(mem, "abcdef");  // only 4 cells kept
  CHECK(mem.cells().size() == 4);
  for (int i = 0; i < 4; ++i) CHECK(mem.call({cmd(1, tok::kRight)}).empty());
  CHECK(mem.call({cmd(1, tok::kRight)}) == Tokens{tok::ERR});
  CHECK(mem.position(1) == 4 && mem.position(0) == 0);
  CHECK(mem.call({cmd(1, tok::kRead)}) == Tokens{tok::BLANK});
  CHECK(!mem.accepts({cmd(2, tok::kRead)}) && mem.call({cmd(2, tok::kRead)}) == Tokens{tok::ERR});
  CHECK(!mem.accepts({cmd(0, tok::kWrite), tok::from_char('x')}));
  CHECK(mem.call({cmd(0, tok::kRead), tok::ANS}) == Tokens{tok::ERR});  // trailing junk
  CHECK(mem.call({}) == Tokens{tok::ERR});
  CHECK(mem.dump().find("dropped") != std::string::npos);
  CHECK_THROWS(std::invalid_argument, PointerMemory(0, 4));
  CHECK_THROWS(std::invalid_argument, PointerMemory(5, 4));
  CHECK_THROWS(std::invalid_argument, PointerMemory(1, 0));
}

TEST(tape_memory_writes) {
  TapeMemory tape(1, 2);
  const Token write = cmd(0, tok::kWrite);
  CHECK(tape.call({write, tok::from_char('x')}).empty());  // empty tape: extends
  CHECK(tape.cells() == text_to_tokens("x"));
  CHECK(tape.call({write, tok::from_char('y')}).empty());  // replaces under the pointer
  CHECK(tape.call({cmd(0, tok::kRight)}).empty());
  CHECK(tape.call({write, tok::BLANK}).empty());
  CHECK(tape.call({cmd(0, tok::kRight)}).empty());
  CHECK(tape.call({write, tok::from_char('z')}) == Tokens{tok::ERR});  // full
  CHECK(tape.call({write, tok::EOS}) == Tokens{tok::ERR});             // not a symbol
  CHECK(tape.call({write, 1000}) == Tokens{tok::ERR});
  CHECK(tape.call({write}) == Tokens{tok::ERR});
  CHECK((tape.cells() == Tokens{tok::from_char('y'), tok::BLANK}));
}

TEST(search_memory_find) {
  SearchMemory mem(8, 32);
  observe_text(mem, "v1 = v2\nv2 = 1\nv12 = v1\n");
  CHECK(answer_text(mem.call(text_to_tokens("find v1"))) == "v1 = v2\nv12 = v1");
  CHECK(mem.call(text_to_tokens("find zz")).empty());
  CHECK(mem.call(text_to_tokens("find"))[0] == tok::ERR);
  CHECK(!mem.accepts(text_to_tokens("finder x")));
  CHECK(mem.call(text_to_tokens("finder x"))[0] == tok::ERR);
  CHECK_THROWS(std::invalid_argument, SearchMemory(0, 32));
}

TEST(calculator_add) {
  CHECK(add_decimal("0", "0") == "0");
  CHECK(add_decimal("999", "1") == "1000");
  CHECK(add_decimal("000123", "7") == "130");
  for (int a = 0; a < 300; a += 7)
    for (int b = 0; b < 3000; b += 131) CHECK(add_decimal(std::to_string(a), std::to_string(b)) == std::to_string(a + b));
  Calculator calc(5);
  CHECK(answer_text(calc.call(text_to_tokens("add 99999 1"))) == "100000");
  CHECK(calc.call(text_to_tokens("add 999999 1"))[0] == tok::ERR);
  CHECK(calc.call(text_to_tokens("add 1 x"))[0] == tok::ERR);
  CHECK(calc.call({tok::ANS})[0] == tok::ERR);
}

TEST(registry_names_unknown_tools_and_options) {
  CHECK(make_tool_factory("pointer_memory", {{"num_pointers", int64_t{3}}})()->name() == "pointer_memory");
  CHECK_THROWS(std::invalid_argument, make_tool_factory("no_such_tool", {}));
  CHECK_THROWS(std::invalid_argument, make_tool_factory("calculator", {{"digits", int64_t{3}}}));
  CHECK_THROWS(std::invalid_argument, make_tool_factory("calculator", {{"max_digits", std::string("3")}}));
  CHECK_THROWS(std::invalid_argument, make_tool_factory("tape_memory", {{"num_pointers", int64_t{9}}}));
}

// The sandbox's `cat`/`edit` take file names, never paths (its jail is tested from Python, where the
// hostile programs run: tests/test_sandbox.py).
TEST(sandbox_file_names_are_not_paths) {
  for (const char* good : {"main.py", "f0.py", "a_b.py"}) CHECK(is_sandbox_file_name(good));
  for (const char* bad : {"../main.py", "/etc/x.py", "a/b.py", ".py", "main.py/", "Main.py", "main.pyc", "main .py",
                          "..", "main.py\n", "x.py "})
    CHECK(!is_sandbox_file_name(bad));
  CHECK(parse_isolation("none") == Isolation::kNone && parse_isolation("namespaces") == Isolation::kNamespaces);
  CHECK_THROWS(std::invalid_argument, parse_isolation("chroot"));
}
