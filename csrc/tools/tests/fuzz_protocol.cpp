// Fuzz target for the parser, the loop and every C++ tool: bytes choose a configuration (small
// bounds, so that every limit is hit), prompts and model scripts, replayed through an Env; then raw
// commands go straight to each tool's call(), and `edit`/`cat` commands with file names built from
// path pieces ("../", "/", ".py", NUL-free bytes) to a code sandbox. Invariants beyond "no crash, no UB"
// (sanitizers): the transcript stays within max_len and the vocabulary, each tool's memory within its
// bounds, and the sandbox's codebase keeps its file names (an edit replaces a file, never adds one).
//
// Built as a libFuzzer target with clang (-fsanitize=fuzzer -DSSM_TOOLS_LIBFUZZER), or, with any
// compiler, as a standalone driver that feeds it structured random inputs for a given time.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include "tools/calculator.h"
#include "tools/cell_memory.h"
#include "tools/code_sandbox.h"
#include "tools/env.h"
#include "tools/search_memory.h"
#include "tools/text.h"
#include "tools/tool_registry.h"

using namespace ssm_tools;

namespace {

class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool empty() const { return pos_ >= size_; }
  int next(int modulo) { return empty() ? 0 : data_[pos_++] % modulo; }

 private:
  const uint8_t* data_;
  size_t size_, pos_ = 0;
};

void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz invariant violated: %s\n", what);
    std::abort();
  }
}

Tokens read_tokens(ByteReader& in, int max_len, int min_len) {
  Tokens out(min_len + in.next(max_len - min_len + 1));
  for (Token& t : out) t = in.next(tok::kVocabSize);
  return out;
}

// A file name of path pieces and stray characters, as a model could write one.
Tokens read_file_name(ByteReader& in) {
  static const char* const kPieces[] = {"../", "/", ".py", "main", "a", "..", ".", "etc/passwd", "_", "0", " ", "\\"};
  std::string name;
  for (int n = in.next(8); n > 0; --n) name += in.next(2) ? kPieces[in.next(12)] : std::string(1, static_cast<char>(32 + in.next(95)));
  Tokens out = text_to_tokens(name);
  if (in.next(8) == 0) out.push_back(in.next(tok::kVocabSize));  // now and then a token that is no character
  return out;
}

// `edit <name>\n<content>` and `cat <name>` straight into a sandbox (never `run`: no program starts here).
void fuzz_sandbox_file_names(ByteReader& in) {
  CodeSandboxOptions options;
  options.python = "sh";  // any executable: nothing is run
  options.isolation = "none";
  options.max_file_chars = 64;
  static CodeSandbox sandbox(options);
  const Codebase start = {{"main.py", "print(1)\n"}, {"a.py", ""}};
  sandbox.load(start);
  for (int i = in.next(6); i > 0; --i) {
    const bool edit = in.next(2);
    Tokens command = text_to_tokens(edit ? "edit " : "cat ");
    const Tokens name = read_file_name(in);
    command.insert(command.end(), name.begin(), name.end());
    if (edit) {
      command.push_back(tok::NEWLINE);
      const Tokens content = read_tokens(in, 80, 0);
      command.insert(command.end(), content.begin(), content.end());
    }
    const Tokens answer = sandbox.call(command);
    require(answer.size() <= 160, "bounded sandbox answer");
    require(sandbox.files().size() == start.size(), "an edit never adds or removes a file");
    for (const auto& [file, content] : sandbox.files()) {
      require(start.count(file) == 1, "the codebase keeps its file names");
      require(content.size() <= 64, "files within max_file_chars");
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ByteReader in(data, size);
  EnvOptions options;
  options.batch_size = 1 + in.next(3);
  options.max_len = 1 + in.next(512);
  options.num_threads = 1 + in.next(2);
  options.protocol.max_call_tokens = 1 + in.next(64);
  options.protocol.max_answer_tokens = 16 + in.next(64);
  const int64_t max_cells = 1 + in.next(64), max_lines = 1 + in.next(8), max_response = 16 + in.next(48);
  const std::vector<ToolFactory> tools = {
      make_tool_factory("pointer_memory", {{"num_pointers", int64_t{1 + in.next(4)}}, {"max_cells", max_cells}}),
      make_tool_factory("tape_memory", {{"num_pointers", int64_t{1 + in.next(4)}}, {"max_cells", max_cells}}),
      make_tool_factory("search_memory", {{"max_lines", max_lines}, {"max_response_tokens", max_response}}),
      make_tool_factory("calculator", {{"max_digits", int64_t{1 + in.next(20)}}})};
  Env env(tools, options);
  std::vector<Tokens> prompts, scripts;
  for (int i = 0; i < options.batch_size; ++i) {
    prompts.push_back(read_tokens(in, static_cast<int>(std::min<int64_t>(32, options.max_len)), 1));
    scripts.push_back(read_tokens(in, 255, 0));
  }
  env.replay(prompts, scripts, in.next(256));
  for (int i = 0; i < options.batch_size; ++i) {
    const Episode& e = env.episode(i);
    require(static_cast<int64_t>(e.tokens().size()) <= options.max_len, "transcript within max_len");
    require(e.tokens().size() == e.generated().size(), "one mask bit per token");
    for (Token t : e.tokens()) require(t >= 0 && t < tok::kVocabSize, "transcript tokens in the vocabulary");
    for (const auto& tool : e.parser().tools()) {
      if (auto* cells = dynamic_cast<const CellMemory*>(tool.get()))
        require(static_cast<int64_t>(cells->cells().size()) <= max_cells, "cells within max_cells");
      if (auto* lines = dynamic_cast<const SearchMemory*>(tool.get()))
        require(static_cast<int64_t>(lines->lines().size()) <= max_lines, "lines within max_lines");
      require(!tool->dump().empty(), "dump is not empty");
    }
  }
  // Raw commands, ids outside the vocabulary included, straight into each tool of episode 0.
  for (const auto& tool : env.episode(0).parser().tools()) {
    Tokens command(in.next(8));
    for (Token& t : command) t = in.next(tok::kVocabSize + 32) - 16;
    const Tokens answer = tool->call(command);
    require(static_cast<int64_t>(answer.size()) <= std::max<int64_t>(max_response, 64), "bounded answer");
  }
  fuzz_sandbox_file_names(in);
  return 0;
}

#ifndef SSM_TOOLS_LIBFUZZER
// Standalone driver: random inputs built from protocol fragments (pointer commands, well-formed and
// broken calls, text), which reach deeper states than uniform bytes. Usage: fuzz_protocol SECONDS [SEED]
int main(int argc, char** argv) {
  const double seconds = argc > 1 ? std::atof(argv[1]) : 10.0;
  const uint64_t seed = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : std::random_device{}();
  std::mt19937_64 rng(seed);
  const std::vector<std::string> words = {"find ", "add ", "add 12 ", "find v1", "ls", "12", " ", "\n", "v1 = 2\n",
                                          "edit ", "cat ", "../", "main.py"};
  const auto start = std::chrono::steady_clock::now();
  uint64_t runs = 0;
  std::vector<uint8_t> input;
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < seconds) {
    input.clear();
    const size_t target = rng() % 4096;
    while (input.size() < target) {
      switch (rng() % 4) {
        case 0: input.push_back(static_cast<uint8_t>(tok::POINTER_BASE + rng() % (tok::POINTER_END - tok::POINTER_BASE))); break;
        case 1: input.push_back(static_cast<uint8_t>(rng() % tok::POINTER_BASE)); break;  // control tokens
        case 2:
          for (Token t : text_to_tokens(words[rng() % words.size()])) input.push_back(static_cast<uint8_t>(t));
          break;
        default: input.push_back(static_cast<uint8_t>(rng())); break;
      }
    }
    LLVMFuzzerTestOneInput(input.data(), input.size());
    ++runs;
  }
  std::printf("fuzz_protocol: %llu inputs in %.0f s, seed %llu, no invariant violated\n",
              static_cast<unsigned long long>(runs), seconds, static_cast<unsigned long long>(seed));
  return 0;
}
#endif
