// CodeSandbox: the tool of the coding (bug-fixing) task. It holds a small Python codebase in memory
// and answers four text commands:
//   ls                         file names, one a line
//   cat <file>                 the file's content
//   edit <file>\n<content>     replace the content of a file of the codebase (no new files)
//   run                        run main.py in a fresh temporary directory; answer "exit <code>" (or
//                              how it was killed) and the last lines of its stdout+stderr
// The codebase comes from the task's instance, never from the user's disk, in one of two ways:
//   * load(files): reset() brings the loaded codebase back, so one instance serves episode after
//     episode (direct use, grading);
//   * codebase_from_prompt: the task registers each instance's codebase (register_codebase) under
//     the first line of its prompt; the sandbox observes its episode's prompt and takes the codebase
//     registered under that line. This is how the Env's per-episode instances, built by one factory
//     from plain options, each get their own codebase.
// `run` runs main.py in a jail of Linux namespaces (sandbox_run.h says what the program can and cannot
// reach), with CPU-time, address-space, file-size and process-count limits, a wall-clock timeout and
// an environment of PATH only; everything it started is killed when it ends. isolation="none" (an
// explicit opt-out, for kernels without user namespaces) keeps only the limits, the timeout and the
// kill of its process group: it contains the mistakes of model-written code, not an attacker.
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include "tools/sandbox_run.h"
#include "tools/tool.h"

namespace ssm_tools {

using Codebase = std::map<std::string, std::string>;  // file name -> content

// Integers and strings, so that ToolSpec("code_sandbox", ...) can carry every option.
struct CodeSandboxOptions {
  int64_t cpu_seconds = 2;           // RLIMIT_CPU (whole seconds, as the kernel counts them)
  int64_t memory_bytes = 256 << 20;  // RLIMIT_AS of the program
  int64_t wall_ms = 5000;            // then the process group is killed
  int64_t max_response_chars = 512;  // of a `run` answer (status line + output tail)
  int64_t max_file_chars = 2048;     // of a file (an edit call must fit the parser's max_call_tokens)
  int64_t max_files = 256;
  std::string python = "python3";    // interpreter; a bare name is looked up on PATH
  std::string tmp_dir;               // isolation "none": where run directories go; empty: $TMPDIR or /tmp
  bool codebase_from_prompt = false;  // take the codebase registered under the prompt's first line
  std::string isolation = "namespaces";  // or "none" (no jail: the program runs with your rights)
  int64_t max_processes = 64;        // jailed: processes and threads of the program (RLIMIT_NPROC)
};

// Registers `files` under `key` for sandboxes with codebase_from_prompt (thread-safe, process-wide;
// beyond 16,384 codebases the least recently registered go). Throws std::invalid_argument for a key
// holding a newline or naming a different codebase already, and for files no sandbox could load.
void register_codebase(const std::string& key, const Codebase& files);

// What one `run` did, before it is written as an answer.
struct RunOutcome {
  std::string status;  // "exit 0", "timeout after 5s (wall clock)", "killed: CPU time limit (2s)", ...
  std::string output;  // stdout and stderr interleaved as written, run directory paths made relative
};

class CodeSandbox : public Tool {
 public:
  // Throws std::invalid_argument naming the option when a limit is not positive, the interpreter
  // cannot be found, or the jail cannot be built on this kernel (see isolation).
  explicit CodeSandbox(CodeSandboxOptions options = {});

  std::string name() const override { return "code_sandbox"; }
  void reset(uint64_t seed) override;
  void observe(Token t) override;
  bool accepts(const Tokens& command) const override;
  Tokens call(const Tokens& command) override;
  std::string dump() const override;

  // Sets the codebase episodes start from (and the current files). Throws std::invalid_argument for a
  // bad file name, an oversized or non-ASCII content, or too many files.
  void load(const Codebase& files);
  const Codebase& files() const { return files_; }
  const CodeSandboxOptions& options() const { return options_; }

  // Runs main.py of the current files (what the `run` command answers from).
  RunOutcome run_program() const;

 private:
  Tokens list_files(const std::string& args) const;
  Tokens show_file(const std::string& args) const;
  Tokens edit_file(const std::string& args);
  Tokens run_command(const std::string& args);

  static ProgramRunner make_runner(const CodeSandboxOptions& options);

  CodeSandboxOptions options_;
  ProgramRunner runner_;
  Codebase loaded_;          // the episode's starting codebase
  Codebase files_;           // the current codebase
  std::string prompt_line_;  // codebase_from_prompt: the prompt's first line so far
  bool prompt_line_done_ = false;
  std::string missing_;      // why there is no codebase (answered to every command), empty if there is
  std::string last_status_;  // of the latest run, for dump()
};

// Whether `name` is a file name the sandbox accepts: [a-z0-9_]+\.py
bool is_sandbox_file_name(const std::string& name);

}  // namespace ssm_tools
