// One run of a model-written program for CodeSandbox: jailed in Linux namespaces (the default) or,
// on explicit request, as a plain child process with resource limits only.
//
// The jail (Isolation::kNamespaces) is built with clone() and mount() directly rather than with
// bubblewrap: the package then needs no system tool beyond the kernel, a run costs one fork and one
// vfork (no extra executable to start), and the jail can do what bubblewrap's command line cannot say
// for a root caller: map the program to an unprivileged uid, so that RLIMIT_NPROC binds (the kernel
// exempts uid 0), and report the program's own exit status from an init of our own.
//
// What a jailed program gets:
//   * new user, mount, PID, network, IPC, UTS and cgroup namespaces; no capabilities (empty bounding,
//     permitted, effective, inheritable and ambient sets, no_new_privs), an unprivileged uid (nobody
//     when the caller is root, else the caller's own), no supplementary groups when the caller is root;
//   * a root of its own, read-only: /usr, /bin, /lib* and /sbin of the host, the interpreter's
//     installation (the folder above its bin/) if it lives elsewhere, /dev/{null,zero,full,random,
//     urandom}, a /proc of its own PID namespace; nothing else of the host (no /home, /root, /etc,
//     /tmp); nested user namespaces are refused (user.max_user_namespaces = 0 inside);
//   * its run directory /sandbox: a tmpfs of bounded size and file count, the only writable place;
//   * no network at all (a network namespace with a loopback that is down);
//   * at most max_processes processes (RLIMIT_NPROC, counted in its own user namespace), the CPU,
//     address-space and file-size limits, an environment of PATH only;
//   * an end: when the program exits, or at the wall-clock limit, the jail's init exits or is killed,
//     and the kernel kills every process left in the PID namespace.
// Not covered: the kernel itself (no seccomp filter: a kernel bug reachable by an unprivileged
// process is reachable from the jail), side channels, and reads of the host's system folders.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace ssm_tools {

enum class Isolation { kNamespaces, kNone };

// "namespaces" or "none"; throws std::invalid_argument naming the option for anything else.
Isolation parse_isolation(const std::string& name);

struct RunLimits {
  int64_t cpu_seconds;    // RLIMIT_CPU
  int64_t memory_bytes;   // RLIMIT_AS
  int64_t wall_ms;        // then the program and everything it started are killed
  int64_t file_bytes;     // RLIMIT_FSIZE; jailed, the run directory holds twice this (and
  int64_t max_files;      // twice max_files files): what a full codebase takes, and as much room again
  int64_t max_processes;  // jailed: RLIMIT_NPROC of the program (its init counts for a non-root caller)
};

struct ProgramResult {
  enum class End { kExited, kTimeout, kError };
  End end = End::kError;
  int wait_status = 0;  // kExited: as from waitpid
  std::string error;    // kError: what went wrong, for the answer
  std::string output;   // the tail of stdout+stderr, the run directory's path shown relative
};

class ProgramRunner {
 public:
  // `interpreter`: an executable path. Throws std::invalid_argument("isolation: ...") when the
  // jail is asked for and this kernel refuses it (the message names the missing feature and the
  // opt-out), so that a sandbox is never silently weaker than asked.
  ProgramRunner(const std::string& interpreter, Isolation isolation, RunLimits limits, std::string tmp_dir,
                size_t output_cap);

  // Runs the interpreter with `args` in a fresh run directory holding `files` (name -> content).
  ProgramResult run(const std::map<std::string, std::string>& files, const std::vector<std::string>& args) const;

  // Where the program runs, as it sees it ("/sandbox" jailed; a fresh temporary directory otherwise).
  static constexpr const char* kJailDir = "/sandbox";

  // One step of building the jail (mounts, maps); public for the file-local setup code.
  struct MountStep {
    enum class Kind { kBindReadOnly, kBindDevice, kSymlink } kind;
    std::string target;  // path inside the jail
    std::string source;  // host path (binds; reached under /oldroot) or the link's target
  };

 private:
  ProgramResult run_plain(const std::map<std::string, std::string>& files, const std::vector<std::string>& argv) const;
  // probe: build the jail and report, without starting the program.
  ProgramResult run_jailed(const std::map<std::string, std::string>& files, const std::vector<std::string>& argv,
                           bool probe = false) const;

  std::string interpreter_;  // resolved symlinks (the jail binds real paths)
  Isolation isolation_;
  RunLimits limits_;
  std::string tmp_dir_;  // plain runs: where run directories go (empty: $TMPDIR or /tmp)
  size_t output_cap_;
  std::vector<std::string> jail_dirs_;  // directories to create inside the jail, parents first
  std::vector<MountStep> jail_mounts_;
};

}  // namespace ssm_tools
