#include "tools/sandbox_run.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>

#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442  // one number on every architecture (Linux 5.12)
#endif
#ifndef MOUNT_ATTR_RDONLY
#define MOUNT_ATTR_RDONLY 0x1
#define MOUNT_ATTR_NOSUID 0x2
#define MOUNT_ATTR_NODEV 0x4
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif

namespace ssm_tools {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using Files = std::map<std::string, std::string>;

Isolation parse_isolation(const std::string& name) {
  if (name == "namespaces") return Isolation::kNamespaces;
  if (name == "none") return Isolation::kNone;
  throw std::invalid_argument("isolation must be \"namespaces\" or \"none\", got '" + name + "'");
}

namespace {

constexpr int kJailNamespaces =
    CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP;
constexpr uid_t kNobody = 65534;  // the program's uid and gid in a jail built by root
const char* const kDevices[] = {"null", "zero", "full", "random", "urandom"};
const char* const kSystemFolders[] = {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"};

// Everything a child needs, prepared before the fork: after it only system calls are made (the
// host is multithreaded; another thread may hold the allocator's lock).
struct Launch {
  char* const* argv;
  char* const* envp;
  const char* dir;
  int stdin_fd, output_fd;
  rlim_t cpu_seconds, memory_bytes, file_bytes, processes;  // processes 0: no RLIMIT_NPROC
  bool jailed;
  uid_t uid;  // jailed: the program's identity
  gid_t gid;
  bool clear_groups;  // jailed by root: the host's supplementary groups go
};

[[noreturn]] void fail_child(const char* message, int code) {
  (void)!write(2, message, std::strlen(message));
  _exit(code);
}

// Jailed: no way back to any privilege, in this process or anything it executes.
bool drop_privileges(const Launch& l) {
  for (int cap = 0; cap < 64; ++cap)  // the bounding set, up to the kernel's last capability
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) {
      if (errno == EINVAL) break;
      return false;
    }
  // Raw system calls: glibc's wrappers would signal the host's other threads, which this copy lacks.
  if (l.clear_groups && syscall(SYS_setgroups, 0, nullptr) != 0) return false;
  if (syscall(SYS_setresgid, l.gid, l.gid, l.gid) != 0 || syscall(SYS_setresuid, l.uid, l.uid, l.uid) != 0)
    return false;
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct none[2] = {};
  return syscall(SYS_capset, &header, none) == 0 && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) == 0 &&
         prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0;
}

[[noreturn]] void exec_program(const Launch& l) {
  if (!l.jailed) setpgid(0, 0);  // own process group, so a timeout kills everything it started
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  signal(SIGPIPE, SIG_DFL);  // Python hosts ignore SIGPIPE; ignored signals survive exec
  dup2(l.stdin_fd, 0);
  dup2(l.output_fd, 1);
  dup2(l.output_fd, 2);
#ifdef SYS_close_range
  syscall(SYS_close_range, 3, ~0U, 0);  // no descriptor of the host leaks into the program
#else
  for (int fd = 3; fd < 1024; ++fd) close(fd);
#endif
  const rlimit cpu{l.cpu_seconds, l.cpu_seconds + 1};  // SIGXCPU at the soft limit, SIGKILL a second later
  const rlimit memory{l.memory_bytes, l.memory_bytes};
  const rlimit file{l.file_bytes, l.file_bytes};
  const rlimit processes{l.processes, l.processes};
  const rlimit no_core{0, 0};
  if (chdir(l.dir) != 0 || setrlimit(RLIMIT_CPU, &cpu) != 0 || setrlimit(RLIMIT_AS, &memory) != 0 ||
      setrlimit(RLIMIT_FSIZE, &file) != 0 || setrlimit(RLIMIT_CORE, &no_core) != 0 ||
      (l.processes && setrlimit(RLIMIT_NPROC, &processes) != 0))
    fail_child("sandbox: could not set up the run\n", 126);
  if (l.jailed && !drop_privileges(l)) fail_child("sandbox: could not drop privileges\n", 126);
  execve(l.argv[0], l.argv, l.envp);
  fail_child("sandbox: could not start the interpreter\n", 127);
}

// Writes `files` into the directory `dir_fd`, owned by uid/gid (-1: unchanged); 0 or an errno.
int write_files(int dir_fd, const Files& files, uid_t uid, gid_t gid) {
  for (const auto& [name, content] : files) {
    const int fd = openat(dir_fd, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return errno;
    for (size_t done = 0; done < content.size();) {
      const ssize_t n = write(fd, content.data() + done, content.size() - done);
      if (n < 0 && errno != EINTR) {
        const int error = errno;
        close(fd);
        return error;
      }
      done += n > 0 ? static_cast<size_t>(n) : 0;
    }
    const bool owned = fchown(fd, uid, gid) == 0;
    const int error = errno;
    close(fd);
    if (!owned) return error;
  }
  return 0;
}

// ------------------------------------------------------------------------------------------ jail
// What the jail's init reports through the status pipe: the program's wait status (step < 0), or
// the setup step that failed and its errno.
struct JailReport {
  int32_t step;
  int32_t value;
};

enum Step : int32_t {
  kPrivate, kRootTmpfs, kPivot, kMkdir, kSymlink, kBind, kReadOnly, kDevice, kRunDir, kWriteFiles,
  kDetachHost, kRootReadOnly, kStart, kReap, kNumSteps
};
const char* const kStepNames[kNumSteps] = {
    "make the mounts private", "mount a tmpfs as the new root", "pivot_root",
    "create a mount point", "create a symlink", "bind a system folder", "make a system folder read-only (mount_setattr, Linux 5.12+)",
    "bind a device", "mount the run directory", "write the codebase", "detach the host's root",
    "make the root read-only", "start the program", "wait for the program"};

struct JailSetup {
  Launch launch;
  int sync_fd, status_fd;
  const std::vector<std::string>* dirs;
  const std::vector<ProgramRunner::MountStep>* mounts;
  const char* run_dir_options;  // tmpfs options of /sandbox
  const Files* files;
  bool probe;                   // build the jail, report success, start nothing
  char* arg_start;              // the host's command line and environment in this copy of its memory,
  size_t arg_size, env_size;    // blanked so that the program cannot read them in /proc/1
  char* env_start;
};

[[noreturn]] void report(int fd, int32_t step, int32_t value) {
  const JailReport r{step, value};
  (void)!write(fd, &r, sizeof(r));
  _exit(step < 0 ? 0 : 1);
}

bool read_only_recursive(const char* path) {
  struct {
    uint64_t attr_set, attr_clr, propagation, userns_fd;
  } attr{MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0};
  return syscall(SYS_mount_setattr, AT_FDCWD, path, AT_RECURSIVE, &attr, sizeof(attr)) == 0;
}

// The jail's init: PID 1 of the new PID namespace, in new user and mount namespaces. Builds the
// root, starts the program, reaps everything until the program ends, reports its status and exits,
// which makes the kernel kill whatever the program left.
[[noreturn]] void jail_init(const JailSetup& s) {
  char go = 0;
  if (read(s.sync_fd, &go, 1) != 1) _exit(1);  // the host failed to write the maps, or is gone
  // Keep only the program's stdin (0), its output (1, 2) and the report (3): a concurrent run's pipes,
  // copied here with the host's descriptors, must not stay open for as long as this run lasts.
  const int in = fcntl(s.launch.stdin_fd, F_DUPFD, 10), output = fcntl(s.launch.output_fd, F_DUPFD, 10),
            status = fcntl(s.status_fd, F_DUPFD, 10);
  if (in < 0 || output < 0 || status < 0 || dup2(in, 0) < 0 || dup2(output, 1) < 0 || dup2(output, 2) < 0 ||
      dup2(status, 3) < 0)
    _exit(1);
#ifdef SYS_close_range
  syscall(SYS_close_range, 4, ~0U, 0);
#else
  for (int fd = 4; fd < 1024; ++fd) close(fd);
#endif
  const int out = 3;
  Launch launch = s.launch;
  launch.stdin_fd = 0;
  launch.output_fd = 1;
  for (int sig = 1; sig < NSIG; ++sig) signal(sig, SIG_DFL);  // no handler of the host's runs here
  setpgid(0, 0);  // out of the host's process group: the terminal's ^C is not ours
  if (s.arg_start) std::memset(s.arg_start, 0, s.arg_size);
  if (s.env_start) std::memset(s.env_start, 0, s.env_size);
  static const char kHostName[] = "sandbox";
  (void)!sethostname(kHostName, sizeof(kHostName) - 1);

  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) report(out, kPrivate, errno);
  if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k") != 0) report(out, kRootTmpfs, errno);
  if (chdir("/tmp") != 0 || mkdir("oldroot", 0755) != 0 || syscall(SYS_pivot_root, ".", "oldroot") != 0 ||
      chdir("/") != 0)
    report(out, kPivot, errno);
  for (const std::string& dir : *s.dirs)
    if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) report(out, kMkdir, errno);
  for (const ProgramRunner::MountStep& m : *s.mounts) {
    using Kind = ProgramRunner::MountStep::Kind;
    const char* target = m.target.c_str();
    if (m.kind == Kind::kSymlink) {
      if (symlink(m.source.c_str(), target) != 0) report(out, kSymlink, errno);
    } else if (m.kind == Kind::kBindDevice) {
      const int fd = open(target, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
      if (fd < 0 || close(fd) != 0 || mount(m.source.c_str(), target, nullptr, MS_BIND, nullptr) != 0)
        report(out, kDevice, errno);
    } else {
      if (mount(m.source.c_str(), target, nullptr, MS_BIND | MS_REC, nullptr) != 0) report(out, kBind, errno);
      if (!read_only_recursive(target)) report(out, kReadOnly, errno);
    }
  }
  // Its own /proc (where the kernel allows one; else none: still no view of the host's processes),
  // and no nested user namespaces (the kernel surface they open is not the program's to use).
  if (mkdir("/proc", 0555) == 0 && mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) == 0) {
    const int fd = open("/proc/sys/user/max_user_namespaces", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
      (void)!write(fd, "0", 1);
      close(fd);
    }
  }
  if (mkdir(ProgramRunner::kJailDir, 0700) != 0 ||
      mount("tmpfs", ProgramRunner::kJailDir, "tmpfs", MS_NOSUID | MS_NODEV, s.run_dir_options) != 0)
    report(out, kRunDir, errno);
  const int dir_fd = open(ProgramRunner::kJailDir, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
  const int error = dir_fd < 0 ? errno : write_files(dir_fd, *s.files, launch.uid, launch.gid);
  if (error) report(out, kWriteFiles, error);
  close(dir_fd);
  if (umount2("/oldroot", MNT_DETACH) != 0 || rmdir("/oldroot") != 0) report(out, kDetachHost, errno);
  if (mount(nullptr, "/", nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, nullptr) != 0)
    report(out, kRootReadOnly, errno);
  if (s.probe) report(out, -1, 0);

  const pid_t program = vfork();  // the init's memory is a copy of the host's: vfork spares a second copy
  if (program == 0) exec_program(launch);
  if (program < 0) report(out, kStart, errno);
  prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);  // the program may share the init's uid: no ptrace, no /proc/1/mem
  for (;;) {  // orphans of the program are reparented here: reap them too
    int status = 0;
    const pid_t pid = waitpid(-1, &status, 0);
    if (pid == program) report(out, -1, status);
    if (pid < 0 && errno != EINTR) report(out, kReap, errno);
  }
}

std::string errno_text(int error) { return std::strerror(error); }

void write_proc_file(const std::string& path, const std::string& text) {
  std::ofstream file(path);
  if (!(file << text) || !file.flush()) throw std::runtime_error("cannot write " + path + ": " + errno_text(errno));
}

// The maps of a new user namespace, written by the host (the jail waits for them). A root caller
// maps itself (the init needs a mapped identity to build the jail) and nobody, the program's
// identity; anyone else can map only itself, and must give up setgroups first.
void write_id_maps(pid_t pid) {
  const std::string proc = "/proc/" + std::to_string(pid) + "/";
  const uid_t uid = geteuid();
  const gid_t gid = getegid();
  const std::string nobody = std::to_string(kNobody) + " " + std::to_string(kNobody) + " 1\n";
  if (uid != 0) write_proc_file(proc + "setgroups", "deny");
  write_proc_file(proc + "uid_map", std::to_string(uid) + " " + std::to_string(uid) + " 1\n" + (uid == 0 ? nobody : ""));
  write_proc_file(proc + "gid_map", std::to_string(gid) + " " + std::to_string(gid) + " 1\n" +
                                        (uid == 0 && gid != kNobody ? nobody : ""));
}

std::string refused_message(const std::string& what) {
  return "the kernel refused the sandbox's namespaces (" + what +
         "); isolation=\"namespaces\" needs unprivileged user namespaces with mount, PID and network "
         "namespaces (see sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone, AppArmor's "
         "userns restriction). isolation=\"none\" runs programs without the jail, with your rights";
}

// Where this process's command line and environment lie in its memory (fields 48..51 of
// /proc/self/stat), so that the jail's copy can blank them; zeros if unknown.
struct ArgArea {
  uintptr_t arg_start = 0, arg_end = 0, env_start = 0, env_end = 0;
};

const ArgArea& host_arg_area() {
  static const ArgArea area = [] {
    ArgArea a;
    std::ifstream stat("/proc/self/stat");
    std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    std::istringstream fields(text.substr(text.rfind(')') + 2));  // the name may hold spaces
    std::string field;
    for (int i = 3; i < 48 && fields >> field; ++i) {
    }
    if (!(fields >> a.arg_start >> a.arg_end >> a.env_start >> a.env_end)) a = ArgArea{};
    return a;
  }();
  return area;
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

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left > 0 ? static_cast<int>(left) : 0;
}

// Whether the child has exited. Not reaping it keeps its id (and a plain run's process-group id)
// reserved until everything it started has been killed.
bool leader_exited(pid_t pid) {
  siginfo_t info{};
  if (waitid(P_PID, pid, &info, WEXITED | WNOHANG | WNOWAIT) == 0) return info.si_pid == pid;
  return errno == ECHILD;  // a host that ignores SIGCHLD has it reaped already: nothing to wait for
}

// Collects the program's output until the child has exited, or the deadline passes; true if it
// exited in time. Once it has exited only what is already in the pipe is taken: a process it left
// behind may hold the pipe open forever.
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

void replace_all(std::string* text, const std::string& from, const std::string& to) {
  for (size_t pos = text->find(from); pos != std::string::npos; pos = text->find(from, pos + to.size()))
    text->replace(pos, from.size(), to);
}

struct Argv {  // argv/envp as the children need them: char* arrays over strings that outlive the run
  std::vector<std::string> args, env;
  std::vector<char*> argv, envp;
  Argv(std::vector<std::string> a, std::vector<std::string> e) : args(std::move(a)), env(std::move(e)) {
    for (auto& s : args) argv.push_back(s.data());
    for (auto& s : env) envp.push_back(s.data());
    argv.push_back(nullptr);
    envp.push_back(nullptr);
  }
};

Argv program_argv(const std::string& interpreter, const std::vector<std::string>& args) {
  std::vector<std::string> argv = {interpreter};
  argv.insert(argv.end(), args.begin(), args.end());
  return Argv(std::move(argv), {std::string("PATH=") + (std::getenv("PATH") ? std::getenv("PATH") : "/usr/bin:/bin")});
}

// The pipes of one run, closed when it ends: the program's stdin (/dev/null) and output, the jail's
// status report and the go-ahead once the maps are written.
struct RunPipes {
  int devnull = -1, output[2] = {-1, -1}, status[2] = {-1, -1}, sync[2] = {-1, -1};
  bool open(bool jailed) {
    devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    return devnull >= 0 && pipe2(output, O_CLOEXEC) == 0 &&
           (!jailed || (pipe2(status, O_CLOEXEC) == 0 && pipe2(sync, O_CLOEXEC) == 0));
  }
  void close_child_ends() {
    for (int* fd : {&devnull, &output[1], &status[1], &sync[0]}) close_fd(fd);
  }
  ~RunPipes() {
    for (int* fd : {&devnull, &output[0], &output[1], &status[0], &status[1], &sync[0], &sync[1]}) close_fd(fd);
  }
  static void close_fd(int* fd) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
  }
};

ProgramResult error_result(const std::string& what) {
  ProgramResult r;
  r.error = what;
  return r;
}

// Waits for the child once its output is collected (or the deadline passed), killing what is left:
// kill_target is -pgid for a plain run (its process group), the init's pid for a jail (the kernel
// then kills the whole PID namespace).
ProgramResult finish(pid_t pid, pid_t kill_target, int output_fd, Clock::time_point deadline, size_t cap,
                     int* wait_status, bool* reaped) {
  TailBuffer output(cap);
  const bool in_time = collect_output(pid, output_fd, deadline, &output);
  kill(kill_target, SIGKILL);  // the program on timeout, and anything it left running in every case
  pid_t got;
  while ((got = waitpid(pid, wait_status, 0)) < 0 && errno == EINTR) {
  }
  *reaped = got == pid;
  ProgramResult r;
  r.end = in_time ? ProgramResult::End::kExited : ProgramResult::End::kTimeout;
  r.output = output.str();
  return r;
}

void show_relative(std::string* output, const std::string& dir) {
  replace_all(output, dir + "/", "");  // the run directory's paths become relative, the directory "."
  replace_all(output, dir, ".");
}

// Why the jail cannot be built for `runner` on this kernel; empty if it can. One probe per
// interpreter and process: the kernel's answer does not change while the process runs.
std::string jail_problem(const std::string& interpreter, const std::function<std::string()>& probe) {
  static std::mutex mu;
  static std::map<std::string, std::string> known;
  std::lock_guard<std::mutex> lock(mu);
  auto it = known.find(interpreter);
  if (it == known.end()) it = known.emplace(interpreter, probe()).first;
  return it->second;
}

}  // namespace

ProgramRunner::ProgramRunner(const std::string& interpreter, Isolation isolation, RunLimits limits,
                             std::string tmp_dir, size_t output_cap)
    : isolation_(isolation), limits_(limits), tmp_dir_(std::move(tmp_dir)), output_cap_(output_cap) {
  std::error_code error;
  interpreter_ = fs::canonical(interpreter, error).string();
  if (error) interpreter_ = interpreter;
  if (isolation_ == Isolation::kNone) return;

  auto add_dirs = [this](const fs::path& path) {  // path and its parents, parents first
    std::vector<std::string> chain;
    for (fs::path p = path; p.has_relative_path(); p = p.parent_path()) chain.insert(chain.begin(), p.string());
    for (const std::string& d : chain)
      if (std::find(jail_dirs_.begin(), jail_dirs_.end(), d) == jail_dirs_.end()) jail_dirs_.push_back(d);
  };
  for (const char* name : kSystemFolders) {
    const fs::path host = fs::path("/") / name;
    const auto status = fs::symlink_status(host, error);
    if (error || !fs::exists(status)) continue;
    if (fs::is_symlink(status)) {
      jail_mounts_.push_back({MountStep::Kind::kSymlink, host.string(), fs::read_symlink(host, error).string()});
    } else if (fs::is_directory(status)) {
      add_dirs(host);
      jail_mounts_.push_back({MountStep::Kind::kBindReadOnly, host.string(), "/oldroot" + host.string()});
    }
  }
  // The interpreter's installation (pyenv, conda, /opt/...), when it is not a system folder's.
  const fs::path prefix = fs::path(interpreter_).parent_path().parent_path();
  const std::string top = prefix.has_relative_path() ? std::next(prefix.begin())->string() : std::string();
  if (std::find(std::begin(kSystemFolders), std::end(kSystemFolders), top) == std::end(kSystemFolders) &&
      prefix.has_relative_path()) {
    add_dirs(prefix);
    jail_mounts_.push_back({MountStep::Kind::kBindReadOnly, prefix.string(), "/oldroot" + prefix.string()});
  }
  jail_dirs_.push_back("/dev");
  for (const char* device : kDevices)
    jail_mounts_.push_back({MountStep::Kind::kBindDevice, std::string("/dev/") + device, std::string("/oldroot/dev/") + device});
  jail_mounts_.push_back({MountStep::Kind::kSymlink, "/dev/fd", "/proc/self/fd"});
  const char* const kStreams[] = {"stdin", "stdout", "stderr"};
  for (int fd = 0; fd < 3; ++fd)
    jail_mounts_.push_back({MountStep::Kind::kSymlink, std::string("/dev/") + kStreams[fd], "/proc/self/fd/" + std::to_string(fd)});

  const std::string problem = jail_problem(interpreter_, [this] {
    const ProgramResult probe = run_jailed({}, {}, true);
    return probe.end == ProgramResult::End::kError ? probe.error : std::string();
  });
  if (!problem.empty()) throw std::invalid_argument("isolation: " + problem);
}

ProgramResult ProgramRunner::run(const Files& files, const std::vector<std::string>& args) const {
  return isolation_ == Isolation::kNone ? run_plain(files, args) : run_jailed(files, args);
}

ProgramResult ProgramRunner::run_plain(const Files& files, const std::vector<std::string>& args) const {
  TempDir dir(tmp_dir_);
  if (dir.path().empty()) return error_result("cannot create a run directory: " + errno_text(errno));
  const int dir_fd = open(dir.path().c_str(), O_DIRECTORY | O_RDONLY | O_CLOEXEC);
  const int error = dir_fd < 0 ? errno : write_files(dir_fd, files, static_cast<uid_t>(-1), static_cast<gid_t>(-1));
  if (dir_fd >= 0) close(dir_fd);
  if (error) return error_result("cannot write the codebase: " + errno_text(error));
  Argv argv = program_argv(interpreter_, args);
  RunPipes pipes;
  if (!pipes.open(false)) return error_result(errno_text(errno));
  const Launch launch{argv.argv.data(), argv.envp.data(), dir.path().c_str(), pipes.devnull, pipes.output[1],
                      static_cast<rlim_t>(limits_.cpu_seconds), static_cast<rlim_t>(limits_.memory_bytes),
                      static_cast<rlim_t>(limits_.file_bytes), 0, false, 0, 0, false};
  const auto deadline = Clock::now() + std::chrono::milliseconds(limits_.wall_ms);
  const pid_t pid = fork();
  if (pid == 0) exec_program(launch);
  pipes.close_child_ends();
  if (pid < 0) return error_result("fork failed: " + errno_text(errno));
  setpgid(pid, pid);  // also here, so the group exists before any kill below (whichever runs first)
  int status = 0;
  bool reaped = false;
  ProgramResult r = finish(pid, -pid, pipes.output[0], deadline, output_cap_ + 2 * dir.path().size(), &status, &reaped);
  if (r.end == ProgramResult::End::kExited && !reaped)
    return error_result("the exit status was lost (SIGCHLD ignored by the host?)");
  r.wait_status = status;
  show_relative(&r.output, dir.path());
  return r;
}

ProgramResult ProgramRunner::run_jailed(const Files& files, const std::vector<std::string>& args, bool probe) const {
  const bool root = geteuid() == 0;
  const uid_t uid = root ? kNobody : geteuid();
  const gid_t gid = root ? kNobody : getegid();
  // Twice what a full codebase takes (a file occupies at least a page): room to write, never a flood.
  const int64_t run_dir_bytes = 2 * (limits_.file_bytes + 4096 * limits_.max_files);
  const std::string run_dir_options = "size=" + std::to_string(run_dir_bytes) + ",nr_inodes=" +
                                      std::to_string(2 * limits_.max_files + 16) + ",mode=0700,uid=" +
                                      std::to_string(uid) + ",gid=" + std::to_string(gid);
  Argv argv = program_argv(interpreter_, args);
  RunPipes pipes;
  if (!pipes.open(true)) return error_result(errno_text(errno));
  const ArgArea& area = host_arg_area();
  const JailSetup setup{
      Launch{argv.argv.data(), argv.envp.data(), kJailDir, pipes.devnull, pipes.output[1],
             static_cast<rlim_t>(limits_.cpu_seconds), static_cast<rlim_t>(limits_.memory_bytes),
             static_cast<rlim_t>(limits_.file_bytes), static_cast<rlim_t>(limits_.max_processes), true, uid, gid, root},
      pipes.sync[0], pipes.status[1], &jail_dirs_, &jail_mounts_, run_dir_options.c_str(), &files, probe,
      reinterpret_cast<char*>(area.arg_start), area.arg_end - area.arg_start, area.env_end - area.env_start,
      reinterpret_cast<char*>(area.env_start)};
  const auto deadline = Clock::now() + std::chrono::milliseconds(limits_.wall_ms);
  // A raw clone: fork's semantics (a copy of this process) with new namespaces, which unshare()
  // refuses to a multithreaded process. Zeros for the stack and TLS arguments: the child goes on
  // on a copy of this stack.
  const pid_t pid = static_cast<pid_t>(syscall(SYS_clone, kJailNamespaces | SIGCHLD, 0, 0, 0, 0));
  if (pid == 0) jail_init(setup);
  pipes.close_child_ends();
  if (pid < 0) return error_result(refused_message("clone with new user, mount, PID and network namespaces: " + errno_text(errno)));
  try {
    write_id_maps(pid);
  } catch (const std::runtime_error& e) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    return error_result(refused_message(e.what()));
  }
  (void)!write(pipes.sync[1], "x", 1);
  RunPipes::close_fd(&pipes.sync[1]);

  int status = 0;
  bool reaped = false;
  ProgramResult r = finish(pid, pid, pipes.output[0], deadline, output_cap_ + 2 * std::strlen(kJailDir), &status, &reaped);
  // Non-blocking: a concurrent run's jail may still hold a copy of the write end for a moment.
  JailReport report{kNumSteps, 0};
  fcntl(pipes.status[0], F_SETFL, O_NONBLOCK);
  const bool reported = read(pipes.status[0], &report, sizeof(report)) == sizeof(report);
  if (r.end == ProgramResult::End::kExited) {
    if (!reported) return error_result("the jail ended without a report (wait status " + std::to_string(status) + ")");
    if (report.step >= 0 && report.step < kNumSteps) {
      const std::string what = std::string("could not ") + kStepNames[report.step] + ": " + errno_text(report.value);
      return error_result(report.step < kWriteFiles ? refused_message(what) : what);
    }
    r.wait_status = report.value;
  }
  show_relative(&r.output, kJailDir);
  return r;
}

}  // namespace ssm_tools
