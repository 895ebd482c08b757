#include "tools/code_sandbox.h"

#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <list>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

#include "tools/text.h"

namespace ssm_tools {

bool is_sandbox_file_name(const std::string& name) {
  if (name.size() < 4) return false;
  const size_t stem = name.size() - 3;
  if (name.compare(stem, 3, ".py") != 0) return false;
  for (size_t i = 0; i < stem; ++i) {
    const char c = name[i];
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
  }
  return true;
}

namespace {

constexpr size_t kMaxRegisteredCodebases = 1 << 14;  // far more than one batch registers before it starts
constexpr size_t kMaxPromptLine = 256;
constexpr size_t kMaxNameChars = 64;  // so that `ls` answers stay bounded

// A model-written argument inside an error answer, quoted and cut short: answers stay bounded.
std::string quoted(const std::string& arg) {
  constexpr size_t kShown = 40;
  return "'" + (arg.size() <= kShown ? arg : arg.substr(0, kShown) + "...") + "'";
}

// Whether every character has a token (so that `cat` can show the file exactly).
bool is_tokenizable(const std::string& text) {
  for (char c : text)
    if (tok::from_char(c) < 0) return false;
  return true;
}

// Why `files` cannot be a sandbox's codebase under these limits; empty if it can.
std::string codebase_problem(const Codebase& files, size_t max_files, size_t max_file_chars) {
  if (files.size() > max_files)
    return std::to_string(files.size()) + " files, at most max_files=" + std::to_string(max_files);
  for (const auto& [name, content] : files) {
    if (!is_sandbox_file_name(name) || name.size() > kMaxNameChars)
      return "name " + quoted(name) + " must match [a-z0-9_]+\\.py, at most " + std::to_string(kMaxNameChars) +
             " characters";
    if (content.size() > max_file_chars)
      return "'" + name + "' has " + std::to_string(content.size()) + " characters, at most max_file_chars=" +
             std::to_string(max_file_chars);
    if (!is_tokenizable(content)) return "'" + name + "' must hold printable ASCII and newlines only";
  }
  return "";
}

// The codebases registered for codebase_from_prompt sandboxes; the least recently registered goes
// first when full (a small codebase can come back often: registering it again keeps it).
class CodebaseRegistry {
 public:
  static CodebaseRegistry& instance() {
    static CodebaseRegistry registry;
    return registry;
  }
  void add(const std::string& key, const Codebase& files) {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = entries_.find(key);
    if (it != entries_.end()) {
      if (it->second.first != files) throw std::invalid_argument("key: '" + key + "' already names another codebase");
      order_.splice(order_.end(), order_, it->second.second);
      return;
    }
    entries_.emplace(key, std::make_pair(files, order_.insert(order_.end(), key)));
    if (order_.size() > kMaxRegisteredCodebases) {
      entries_.erase(order_.front());
      order_.pop_front();
    }
  }
  bool find(const std::string& key, Codebase* files) const {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = entries_.find(key);
    if (it == entries_.end()) return false;
    *files = it->second.first;
    return true;
  }

 private:
  mutable std::mutex mu_;
  std::list<std::string> order_;  // keys, least recently registered first
  std::unordered_map<std::string, std::pair<Codebase, std::list<std::string>::iterator>> entries_;
};

std::string find_on_path(const std::string& program) {
  if (program.find('/') != std::string::npos) return access(program.c_str(), X_OK) == 0 ? program : "";
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/bin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    const std::string candidate = (dir.empty() ? "." : dir) + "/" + program;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

std::string seconds_text(double s) {
  std::ostringstream out;
  out << s << "s";
  return out.str();
}

std::string missing_prompt_codebase(const std::string& line) {
  return "no codebase registered for this episode's prompt line " + quoted(line);
}

// The `run` answer's status line. SIGKILL can only be RLIMIT_CPU's hard limit here: the sandbox's own
// SIGKILL comes after the exit (or with the timeout).
std::string status_text(const ProgramResult& r, const CodeSandboxOptions& o) {
  if (r.end == ProgramResult::End::kError) return "sandbox error: " + r.error;
  if (r.end == ProgramResult::End::kTimeout) return "timeout: killed after " + seconds_text(o.wall_ms / 1000.0) + " (wall clock)";
  if (WIFEXITED(r.wait_status)) return "exit " + std::to_string(WEXITSTATUS(r.wait_status));
  const int sig = WTERMSIG(r.wait_status);
  if (sig == SIGXCPU || sig == SIGKILL) return "killed: CPU time limit (" + seconds_text(o.cpu_seconds) + ")";
  return "killed by signal " + std::to_string(sig) + " (" + strsignal(sig) + ")";
}

// The last whole lines of `text` that fit in `budget` characters (the end of one line if none fits).
std::string tail_lines(const std::string& text, size_t budget) {
  if (text.size() <= budget) return text;
  const size_t start = text.size() - budget;
  const size_t newline = text.find('\n', start);
  return newline == std::string::npos || newline + 1 == text.size() ? text.substr(start)
                                                                      : text.substr(newline + 1);
}

}  // namespace

void register_codebase(const std::string& key, const Codebase& files) {
  if (key.empty() || key.size() > kMaxPromptLine || key.find('\n') != std::string::npos || !is_tokenizable(key))
    throw std::invalid_argument("key: must be 1.." + std::to_string(kMaxPromptLine) +
                                " printable ASCII characters without a newline, got '" + key + "'");
  const std::string problem = codebase_problem(files, std::numeric_limits<size_t>::max(),
                                               std::numeric_limits<size_t>::max());
  if (!problem.empty()) throw std::invalid_argument("files: " + problem);
  CodebaseRegistry::instance().add(key, files);
}

CodeSandbox::CodeSandbox(CodeSandboxOptions options) : options_(std::move(options)), runner_(make_runner(options_)) {
  reset(0);
}

ProgramRunner CodeSandbox::make_runner(const CodeSandboxOptions& options) {
  auto require_positive = [](int64_t value, const char* what) {
    if (value <= 0) throw std::invalid_argument(std::string(what) + " must be > 0, got " + std::to_string(value));
  };
  require_positive(options.cpu_seconds, "cpu_seconds");
  require_positive(options.memory_bytes, "memory_bytes");
  require_positive(options.wall_ms, "wall_ms");
  require_positive(options.max_response_chars, "max_response_chars");
  require_positive(options.max_file_chars, "max_file_chars");
  require_positive(options.max_files, "max_files");
  require_positive(options.max_processes, "max_processes");
  const std::string python = find_on_path(options.python);
  if (python.empty()) throw std::invalid_argument("python: no executable '" + options.python + "' (absolute, or on PATH)");
  const RunLimits limits{options.cpu_seconds, options.memory_bytes, options.wall_ms,
                         options.max_file_chars * options.max_files, options.max_files, options.max_processes};
  return ProgramRunner(python, parse_isolation(options.isolation), limits, options.tmp_dir,
                       4 * static_cast<size_t>(options.max_response_chars));
}

void CodeSandbox::load(const Codebase& files) {
  const std::string problem = codebase_problem(files, options_.max_files, options_.max_file_chars);
  if (!problem.empty()) throw std::invalid_argument("files: " + problem);
  loaded_ = files;
  reset(0);
}

void CodeSandbox::reset(uint64_t /*seed*/) {  // the sandbox is deterministic: the seed chooses nothing
  prompt_line_.clear();
  prompt_line_done_ = false;
  files_ = options_.codebase_from_prompt ? Codebase{} : loaded_;
  missing_ = options_.codebase_from_prompt ? missing_prompt_codebase("") : "";
  last_status_.clear();
}

void CodeSandbox::observe(Token t) {
  if (!options_.codebase_from_prompt || prompt_line_done_) return;
  if (t != tok::NEWLINE && prompt_line_.size() <= kMaxPromptLine) {
    if (tok::is_char(t)) prompt_line_.push_back(tok::to_char(t));  // [BOS] and the like are not part of it
    return;
  }
  prompt_line_done_ = true;
  Codebase found;
  if (!CodebaseRegistry::instance().find(prompt_line_, &found)) {
    missing_ = missing_prompt_codebase(prompt_line_);
    return;
  }
  missing_ = codebase_problem(found, options_.max_files, options_.max_file_chars);
  if (missing_.empty()) loaded_ = files_ = found;
}

bool CodeSandbox::accepts(const Tokens& command) const {
  // The first word ends at a space or a newline ("edit\n..." is ours too, and malformed).
  std::string word;
  for (Token t : command) {
    if (!tok::is_char(t) || t == tok::from_char(' ') || t == tok::NEWLINE || word.size() > 4) break;
    word.push_back(tok::to_char(t));
  }
  return word == "ls" || word == "cat" || word == "edit" || word == "run";
}

Tokens CodeSandbox::call(const Tokens& command) {
  std::string text;
  if (!tokens_to_text(command, &text)) return error_answer("sandbox commands are text");
  if (!missing_.empty()) return error_answer(missing_);
  const size_t end = text.find_first_of(" \n");
  const std::string word = text.substr(0, end);
  // One space separates the word from its arguments; a newline right after it stays (and is malformed).
  const std::string args = end == std::string::npos ? "" : text.substr(end + (text[end] == ' ' ? 1 : 0));
  if (word == "ls") return list_files(args);
  if (word == "cat") return show_file(args);
  if (word == "edit") return edit_file(args);
  if (word == "run") return run_command(args);
  return error_answer("unknown command " + quoted(word) + " (ls, cat <file>, edit <file>\\n<content>, run)");
}

Tokens CodeSandbox::list_files(const std::string& args) const {
  if (!args.empty()) return error_answer("ls takes no arguments");
  std::string names;
  for (const auto& [name, content] : files_) names += (names.empty() ? "" : "\n") + name;
  return text_to_tokens(names);
}

Tokens CodeSandbox::show_file(const std::string& args) const {
  const auto it = files_.find(args);
  if (it == files_.end()) return error_answer("cat: no file " + quoted(args) + " (see ls)");
  return text_to_tokens(it->second);
}

Tokens CodeSandbox::edit_file(const std::string& args) {
  const size_t newline = args.find('\n');
  if (newline == std::string::npos) return error_answer("edit: the new content goes on the lines after 'edit <file>'");
  const std::string name = args.substr(0, newline);
  if (!is_sandbox_file_name(name)) return error_answer("edit: " + quoted(name) + " is not a file name [a-z0-9_]+.py");
  auto it = files_.find(name);
  if (it == files_.end()) return error_answer("edit: no file " + quoted(name) + " (only files of the codebase)");
  const std::string content = args.substr(newline + 1);
  if (content.size() > static_cast<size_t>(options_.max_file_chars))
    return error_answer("edit: " + std::to_string(content.size()) + " characters, at most " +
                        std::to_string(options_.max_file_chars));
  it->second = content;
  return text_to_tokens("ok");
}

Tokens CodeSandbox::run_command(const std::string& args) {
  if (!args.empty()) return error_answer("run takes no arguments");
  if (!files_.count("main.py")) return error_answer("run: the codebase has no main.py");
  const RunOutcome outcome = run_program();
  last_status_ = outcome.status;
  const size_t budget = options_.max_response_chars;
  std::string answer = outcome.status.substr(0, budget);
  if (answer.size() + 1 < budget && !outcome.output.empty())
    answer += "\n" + tail_lines(outcome.output, budget - answer.size() - 1);
  return text_to_tokens(answer);
}

RunOutcome CodeSandbox::run_program() const {
  // -E -S: no PYTHON* variables, no site-packages (the isolation of -I); not -I itself, whose -P would
  // drop main.py's directory from sys.path and break the codebase's imports. -B: no __pycache__.
  // -u: what was printed before a kill still shows. no_debug_ranges: no ^^^ lines, shorter answers.
  const ProgramResult r = runner_.run(files_, {"-E", "-S", "-B", "-u", "-X", "no_debug_ranges", "main.py"});
  return {status_text(r, options_), r.output};
}

std::string CodeSandbox::dump() const {
  std::ostringstream out;
  out << "code_sandbox: " << files_.size() << " files";
  for (const auto& [name, content] : files_) out << "\n  " << name << " (" << content.size() << " chars)";
  out << "\nlast run: " << (last_status_.empty() ? "none" : last_status_);
  return out.str();
}

}  // namespace ssm_tools
