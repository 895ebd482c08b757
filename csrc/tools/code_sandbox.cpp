#include "tools/code_sandbox.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <list>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <unordered_map>
#include <vector>

#include "tools/text.h"

namespace ssm_tools {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

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

// A mkdtemp directory, removed with everything in it when the object goes away.
class TempDir {
 public:
  explicit TempDir(const std::string& base) {
    std::string root = base;
    if (root.empty()) {
      const char* env = std::getenv("TMPDIR");
      root = env && *env ? env : "/tmp";
    }
    std::string pattern = root + "/ssm_sandbox_XXXXXX";
    if (mkdtemp(pattern.data())) path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;  // nothing useful to do about a failed cleanup in a destructor
    if (!path_.empty()) fs::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Keeps the last `cap` bytes of a stream without holding all of it (a program may print forever).
class TailBuffer {
 public:
  explicit TailBuffer(size_t cap) : cap_(cap) {}
  void append(const char* data, size_t n) {
    text_.append(data, n);
    if (text_.size() > 2 * cap_) text_.erase(0, text_.size() - cap_);
  }
  std::string str() const { return text_.size() > cap_ ? text_.substr(text_.size() - cap_) : text_; }

 private:
  size_t cap_;
  std::string text_;
};

struct ChildSetup {  // everything the child needs, prepared before fork (only async-signal-safe calls after it)
  const char* dir;
  int stdin_fd, output_fd;
  rlim_t cpu_seconds, memory_bytes, file_bytes;
  char* const* argv;
  char* const* envp;
};

[[noreturn]] void exec_child(const ChildSetup& s) {
  setpgid(0, 0);  // own process group, so a timeout kills everything the program started
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  signal(SIGPIPE, SIG_DFL);  // Python hosts ignore SIGPIPE; ignored signals survive exec
  dup2(s.stdin_fd, 0);
  dup2(s.output_fd, 1);
  dup2(s.output_fd, 2);
#ifdef SYS_close_range
  syscall(SYS_close_range, 3, ~0U, 0);  // no descriptor of the host leaks into the program
#else
  for (int fd = 3; fd < 1024; ++fd) close(fd);
#endif
  const rlimit cpu{s.cpu_seconds, s.cpu_seconds + 1};  // SIGXCPU at the soft limit, SIGKILL a second later
  const rlimit memory{s.memory_bytes, s.memory_bytes};
  const rlimit file{s.file_bytes, s.file_bytes};
  const rlimit no_core{0, 0};
  if (chdir(s.dir) != 0 || setrlimit(RLIMIT_CPU, &cpu) != 0 || setrlimit(RLIMIT_AS, &memory) != 0 ||
      setrlimit(RLIMIT_FSIZE, &file) != 0 || setrlimit(RLIMIT_CORE, &no_core) != 0) {
    static const char kMsg[] = "sandbox: could not set up the run\n";
    (void)!write(2, kMsg, sizeof(kMsg) - 1);
    _exit(126);
  }
  execve(s.argv[0], s.argv, s.envp);
  static const char kMsg[] = "sandbox: could not start the interpreter\n";
  (void)!write(2, kMsg, sizeof(kMsg) - 1);
  _exit(127);
}

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left > 0 ? static_cast<int>(left) : 0;
}

// Whether the group leader has exited. Not reaping it keeps the process-group id reserved until the
// group has been killed.
bool leader_exited(pid_t pid) {
  siginfo_t info{};
  if (waitid(P_PID, pid, &info, WEXITED | WNOHANG | WNOWAIT) == 0) return info.si_pid == pid;
  return errno == ECHILD;  // a host that ignores SIGCHLD has it reaped already: nothing to wait for
}

// Collects the program's output until it has exited, or the deadline passes; true if it exited in
// time. Once it has exited only what is already in the pipe is taken: a process it left behind may
// hold the pipe open forever.
bool collect_output(pid_t pid, int fd, Clock::time_point deadline, TailBuffer* out) {
  char buf[4096];
  bool open = true;
  for (;;) {
    const bool exited = leader_exited(pid);
    while (open && remaining_ms(deadline) > 0) {
      pollfd p{fd, POLLIN, 0};
      const int ready = poll(&p, 1, exited ? 0 : std::min(remaining_ms(deadline), 10));
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) break;
      const ssize_t n = read(fd, buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) open = false;
      if (n > 0) out->append(buf, static_cast<size_t>(n));
      if (!exited) break;  // look at the exit and the deadline between chunks
    }
    if (exited) return true;
    if (remaining_ms(deadline) == 0) return false;
    if (!open) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

std::string seconds_text(double s) {
  std::ostringstream out;
  out << s << "s";
  return out.str();
}

std::string missing_prompt_codebase(const std::string& line) {
  return "no codebase registered for this episode's prompt line " + quoted(line);
}

void replace_all(std::string* text, const std::string& from, const std::string& to) {
  for (size_t pos = text->find(from); pos != std::string::npos; pos = text->find(from, pos + to.size()))
    text->replace(pos, from.size(), to);
}

// How a program that ended in time ended. SIGKILL can only be RLIMIT_CPU's hard limit here: the
// sandbox's own SIGKILL comes after the exit (or with the timeout).
std::string status_text(bool reaped, int status, int64_t cpu_seconds) {
  if (!reaped) return "sandbox error: the exit status was lost (SIGCHLD ignored by the host?)";
  if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
  const int sig = WTERMSIG(status);
  if (sig == SIGXCPU || sig == SIGKILL) return "killed: CPU time limit (" + seconds_text(cpu_seconds) + ")";
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

CodeSandbox::CodeSandbox(CodeSandboxOptions options) : options_(std::move(options)) {
  auto require_positive = [](int64_t value, const char* what) {
    if (value <= 0) throw std::invalid_argument(std::string(what) + " must be > 0, got " + std::to_string(value));
  };
  require_positive(options_.cpu_seconds, "cpu_seconds");
  require_positive(options_.memory_bytes, "memory_bytes");
  require_positive(options_.wall_ms, "wall_ms");
  require_positive(options_.max_response_chars, "max_response_chars");
  require_positive(options_.max_file_chars, "max_file_chars");
  require_positive(options_.max_files, "max_files");
  python_path_ = find_on_path(options_.python);
  if (python_path_.empty())
    throw std::invalid_argument("python: no executable '" + options_.python + "' (absolute, or on PATH)");
  reset(0);
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
  TempDir dir(options_.tmp_dir);
  if (dir.path().empty()) return {"sandbox error: cannot create a run directory: " + std::string(std::strerror(errno)), ""};
  for (const auto& [name, content] : files_) {
    std::ofstream file(dir.path() + "/" + name, std::ios::binary);
    if (!(file << content)) return {"sandbox error: cannot write " + name, ""};
  }
  // -E -S: no PYTHON* variables, no site-packages (the isolation of -I); not -I itself, whose -P would
  // drop main.py's directory from sys.path and break the codebase's imports. -B: no __pycache__.
  // -u: what was printed before a kill still shows. no_debug_ranges: no ^^^ lines, shorter answers.
  const std::string path_env = std::string("PATH=") + (std::getenv("PATH") ? std::getenv("PATH") : "/usr/bin:/bin");
  std::vector<std::string> args = {python_path_, "-E", "-S", "-B", "-u", "-X", "no_debug_ranges", "main.py"};
  std::vector<char*> argv, envp = {const_cast<char*>(path_env.c_str()), nullptr};
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  int pipe_fds[2];
  const int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (devnull < 0 || pipe2(pipe_fds, O_CLOEXEC) != 0) {
    if (devnull >= 0) close(devnull);
    return {"sandbox error: " + std::string(std::strerror(errno)), ""};
  }
  const ChildSetup setup{dir.path().c_str(), devnull, pipe_fds[1], static_cast<rlim_t>(options_.cpu_seconds),
                         static_cast<rlim_t>(options_.memory_bytes),
                         static_cast<rlim_t>(options_.max_file_chars) * options_.max_files, argv.data(), envp.data()};
  const auto deadline = Clock::now() + std::chrono::milliseconds(options_.wall_ms);
  const pid_t pid = fork();
  if (pid == 0) exec_child(setup);
  close(pipe_fds[1]);
  close(devnull);
  if (pid < 0) {
    close(pipe_fds[0]);
    return {"sandbox error: fork failed: " + std::string(std::strerror(errno)), ""};
  }
  setpgid(pid, pid);  // also here, so the group exists before any kill below (whichever runs first)

  TailBuffer output(4 * static_cast<size_t>(options_.max_response_chars) + 2 * dir.path().size());
  const bool in_time = collect_output(pid, pipe_fds[0], deadline, &output);
  close(pipe_fds[0]);
  kill(-pid, SIGKILL);  // the program on timeout, and anything it left running in every case
  int status = 0;
  pid_t reaped;
  while ((reaped = waitpid(pid, &status, 0)) < 0 && errno == EINTR) {
  }

  RunOutcome outcome{in_time ? status_text(reaped == pid, status, options_.cpu_seconds)
                             : "timeout: killed after " + seconds_text(options_.wall_ms / 1000.0) + " (wall clock)",
                     output.str()};
  // The run directory's name is random noise: paths in it become relative, the directory itself ".".
  replace_all(&outcome.output, dir.path() + "/", "");
  replace_all(&outcome.output, dir.path(), ".");
  return outcome;
}

std::string CodeSandbox::dump() const {
  std::ostringstream out;
  out << "code_sandbox: " << files_.size() << " files";
  for (const auto& [name, content] : files_) out << "\n  " << name << " (" << content.size() << " chars)";
  out << "\nlast run: " << (last_status_.empty() ? "none" : last_status_);
  return out.str();
}

}  // namespace ssm_tools
