"""The code sandbox against hostile programs: each attack must do no harm, and `run` must answer
normally (an observation for the model, not an error of the tool). The attacks run as the caller of
the tests (root in CI) and, where this machine allows it, through a helper process as an unprivileged
user (nobody), whose jail is built without any privilege. No traffic leaves this machine's loopback.
"""
import ast
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from ssm_tools import _tools
from ssm_tools import vocab as V
from ssm_tools.tools import CodeSandbox

PY = sys.executable
MAX_PROCESSES = 64  # the sandbox's default
NOBODY = 65534
NORMAL_STATUS = ("exit ", "killed", "timeout")  # what a program's run may answer; never "sandbox error"


def ask(sb: CodeSandbox, command: str) -> str:
    answer = sb.call(V.encode(command))
    return V.decode(answer)


def run_as_caller(program: str, python: str = PY) -> str:
    sb = CodeSandbox(python=python)
    sb.load({"main.py": program})
    return ask(sb, "run")


# The unprivileged caller: a helper process as nobody, importing a copy of the compiled tools module
# (it needs nothing else) with an interpreter nobody may run.
def _nobody_setup(tmp: Path):
    """(interpreter, package folder) that nobody can use, or None where this machine cannot."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return None
    package = tmp / "ssm_tools"
    package.mkdir()
    (package / "__init__.py").write_text("")
    shutil.copy(_tools.__file__, package)
    tmp.chmod(0o755)
    package.chmod(0o755)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for python in (os.path.realpath(PY), f"/usr/bin/python{version}"):
        probe = subprocess.run(as_nobody(python, "-c", f"import sys; sys.path.insert(0, {str(tmp)!r}); "
                                         "from ssm_tools._tools import CodeSandbox; CodeSandbox(python=sys.executable)"),
                               capture_output=True, cwd="/")
        if probe.returncode == 0:
            return python, tmp
    return None


def as_nobody(*command: str) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]


@pytest.fixture(scope="module")
def nobody_runner():
    folder = Path(tempfile.mkdtemp(prefix="ssm_sandbox_nobody_"))  # pytest's own tmp folders are 0700
    yield _nobody_runner(folder)
    shutil.rmtree(folder)


def _nobody_runner(folder: Path):
    setup = _nobody_setup(folder)
    if setup is None:
        return None
    python, package_root = setup
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from ssm_tools._tools import CodeSandbox\n"
              "sb = CodeSandbox(python=sys.executable); sb.load({'main.py': sys.stdin.read()})\n"
              "status, output = sb.run_program(); print(status + '\\n' + output, end='')\n")

    def run(program: str) -> str:
        done = subprocess.run(as_nobody(python, "-c", script, str(package_root)), input=program, text=True,
                              capture_output=True, timeout=60, cwd="/")
        assert done.returncode == 0, done.stderr
        return done.stdout

    return run


@pytest.fixture(params=["caller", "nobody"])
def run(request, nobody_runner):
    """Runs a program in a jail built by the caller of the tests, or by an unprivileged user."""
    if request.param == "caller":
        return run_as_caller
    if nobody_runner is None:
        pytest.skip("needs root, setpriv and an interpreter that nobody may run")
    return nobody_runner


def assert_normal(answer: str) -> None:
    assert answer.startswith(NORMAL_STATUS), answer


# ------------------------------------------------------------------------------------- filesystem
def test_cannot_write_or_delete_outside_the_run_directory(run, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    target = tmp_path / "written.txt"
    tmp_path.chmod(0o777)  # even a folder anyone may write to stays out of reach
    victim.chmod(0o666)
    program = f"""
import os
for attempt in (lambda: open({str(target)!r}, "w").write("x"), lambda: os.remove({str(victim)!r}),
                lambda: open("/tmp/ssm_sandbox_escape", "w"), lambda: open("/usr/ssm_sandbox_escape", "w"),
                lambda: os.mkdir("/ssm_sandbox_escape")):
    try:
        attempt()
        print("done")
    except OSError as e:
        print(type(e).__name__)
open("inside.txt", "w").write("the run directory is writable")
print(open("inside.txt").read())
"""
    answer = run(program)
    assert_normal(answer)
    assert "done" not in answer and "the run directory is writable" in answer
    assert victim.read_text() == "keep me" and not target.exists()
    assert not Path("/tmp/ssm_sandbox_escape").exists() and not Path("/usr/ssm_sandbox_escape").exists()


def test_cannot_read_the_home_or_host_files(run):
    fd, secret = tempfile.mkstemp(dir=Path.home(), prefix=".ssm_sandbox_secret_")
    try:
        os.write(fd, b"top-secret-token")
        os.close(fd)
        program = f"""
import os
for path in ({secret!r}, "/etc/passwd", "/etc/hostname"):
    try:
        print(open(path).read())
    except OSError as e:
        print(type(e).__name__)
try:
    print(os.listdir({str(Path.home())!r}))
except OSError as e:
    print(type(e).__name__)
print(sorted(os.listdir("/")))
"""
        answer = run(program)
    finally:
        os.remove(secret)
    assert_normal(answer)
    assert "top-secret-token" not in answer and os.path.basename(secret) not in answer
    assert "root:" not in answer  # /etc/passwd
    top = ast.literal_eval(answer.strip().splitlines()[-1])  # the jail's root: system folders, its own /dev, /proc
    assert not {"home", "etc", "tmp", "var", "work", "opt", "srv", "mnt"} & set(top) - {
        Path(os.path.realpath(PY)).parts[1]}  # the interpreter's installation may live under one


def test_symlinks_in_the_run_directory_do_not_reach_the_host(tmp_path):
    host_target = tmp_path / "through_the_link.txt"
    program = f"""
import os
os.symlink({str(host_target)!r}, "link.txt")
os.symlink("/etc/passwd", "evil.py")
try:
    open("link.txt", "w").write("escaped")
    print("wrote through the link")
except OSError as e:
    print(type(e).__name__)
try:
    print(open("evil.py").read())
except OSError as e:
    print(type(e).__name__)
"""
    sb = CodeSandbox(python=PY)
    sb.load({"main.py": program})
    answer = ask(sb, "run")
    assert_normal(answer)
    assert "wrote through the link" not in answer and "root:" not in answer and not host_target.exists()
    # The tool reads and edits its codebase in memory, never through the disk the program touched.
    assert ask(sb, "cat evil.py") == "[ERR]cat: no file 'evil.py' (see ls)"
    assert ask(sb, "ls") == "main.py"


@pytest.mark.parametrize("command", ["edit ../../etc/x.py\nx = 1\n", "edit /etc/x.py\nx = 1\n",
                                     "edit ../main.py\nx = 1\n", "edit main.py/../x.py\nx = 1\n",
                                     "edit .py\nx = 1\n", "cat ../../etc/passwd", "cat /etc/passwd",
                                     "cat ./main.py", "cat main.py\n"])
def test_path_tricks_in_file_names_are_refused(command):
    sb = CodeSandbox(python=PY)
    sb.load({"main.py": "print(1)\n"})
    answer = sb.call(V.encode(command))
    assert answer[0] == V.ERR
    assert sb.files() == {"main.py": "print(1)\n"}


def test_file_size_and_run_directory_are_bounded(run):
    program = """
try:
    with open("big.bin", "wb") as f:
        f.write(b"x" * (4 << 20))
    print("wrote 4 MiB")
except OSError as e:
    print("big:", e.strerror)
written = 0
try:
    for i in range(100000):
        with open(f"many{i}.bin", "wb") as f:
            f.write(b"x" * 4096)
        written += 1
except OSError as e:
    print("many:", e.strerror)
print("files", written)
"""
    answer = run(program)
    assert_normal(answer)
    assert "big: File too large" in answer and "wrote 4 MiB" not in answer
    files = int(answer.split("files ")[1].split()[0])
    assert 0 < files <= 2 * 256 + 16  # twice max_files (and their pages) in the run directory


# ------------------------------------------------------------------------------------- privileges
def test_no_capabilities_and_the_system_stays_read_only(run):
    program = """
import os
status = dict(line.split(":\\t") for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
print("caps", status["CapEff"], status["CapPrm"], status["CapBnd"], status["CapAmb"], "nnp", status["NoNewPrivs"])
print("uid", os.getuid(), os.geteuid(), "groups", os.getgroups())
for command in ("mount -o remount,rw /", "mount -o remount,rw /usr", "unshare -Ur true", "umount -l /usr"):
    print(command, "->", os.system(command + " 2>/dev/null"))
try:
    open("/usr/ssm_sandbox_remounted", "w")
    print("system writable")
except OSError as e:
    print(type(e).__name__)
"""
    answer = run(program)
    assert_normal(answer)
    zero = "0000000000000000"
    assert f"caps {zero} {zero} {zero} {zero} nnp 1" in answer
    uid = int(answer.split("uid ")[1].split()[0])
    assert uid != 0 and (os.geteuid() != 0 or uid == NOBODY)
    for command in ("mount -o remount,rw /", "mount -o remount,rw /usr", "unshare -Ur true", "umount -l /usr"):
        assert f"{command} -> 0" not in answer
    assert "system writable" not in answer and not Path("/usr/ssm_sandbox_remounted").exists()


def test_host_environment_and_command_line_stay_hidden(monkeypatch):
    monkeypatch.setenv("SSM_SANDBOX_SECRET", "do-not-leak")
    program = """
import os
print(sorted(os.environ))
for path in ("/proc/1/cmdline", "/proc/1/environ", "/proc/1/maps"):
    try:
        print(open(path, "rb").read().replace(b"\\0", b""))
    except OSError as e:
        print(type(e).__name__)
"""
    answer = run_as_caller(program)
    assert_normal(answer)
    assert "do-not-leak" not in answer and "pytest" not in answer
    assert ast.literal_eval(answer.splitlines()[1]) in (["PATH"], ["LC_CTYPE", "PATH"])


# ------------------------------------------------------------------------------------- processes
def test_process_count_is_bounded(run):
    program = """
import os, time
count = 0
for _ in range(500):  # stops at 500 whatever the bound: never an unbounded fork loop
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    count += 1
print("children", count)
"""
    answer = run(program)
    assert_normal(answer)
    children = int(answer.split("children ")[1].split()[0])
    assert 0 < children < MAX_PROCESSES


def test_no_view_of_host_processes_and_no_signal_reaches_them(run):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        program = f"""
import os, signal
print("pids", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
try:
    os.kill({sleeper.pid}, signal.SIGKILL)
    print("signalled")
except OSError as e:
    print(type(e).__name__)
"""
        answer = run(program)
        time.sleep(0.1)
        assert sleeper.poll() is None, "the sleep outside the sandbox was killed"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert_normal(answer)
    assert max(ast.literal_eval(answer.split("pids ")[1].splitlines()[0])) < 10  # its own namespace: a few small pids


def _host_processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass  # gone meanwhile
    return found


def test_daemons_do_not_outlive_the_run(run):
    marker = f"ssm-daemon-{uuid.uuid4().hex}"
    program = f"""
import os, subprocess, sys
if os.fork() == 0:  # a classic daemon: fork, new session, fork again, parent exits
    os.setsid()
    if os.fork() == 0:
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", {marker!r}], start_new_session=True)
    os._exit(0)
os.wait()
import time; time.sleep(0.3)
print("daemon started")
"""
    answer = run(program)
    assert "daemon started" in answer
    deadline = time.monotonic() + 5
    while _host_processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _host_processes_with(marker) == []


# ------------------------------------------------------------------------------------- network
def test_no_network_not_even_the_hosts_loopback(run):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    program = f"""
import socket
for family, address in ((socket.AF_INET, ("127.0.0.1", {port})), (socket.AF_INET6, ("::1", {port}))):
    try:
        socket.create_connection(address, timeout=2)
        print("connected")
    except OSError as e:
        print(type(e).__name__, e.errno)
"""
    try:
        answer = run(program)
        time.sleep(0.1)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody knocked
    finally:
        listener.close()
    assert_normal(answer)
    assert "connected" not in answer


# ------------------------------------------------------------------------------------- the jail itself
def test_kernel_without_user_namespaces_gets_a_clear_error():
    if not shutil.which("unshare") or subprocess.run(["unshare", "-Ur", "true"]).returncode != 0:
        pytest.skip("needs unshare and user namespaces to forbid nested ones")
    script = ("from ssm_tools._tools import CodeSandbox\n"
              "try:\n    CodeSandbox(python=sys.executable)\nexcept ValueError as e:\n    print('refused:', e)\n"
              "sb = CodeSandbox(python=sys.executable, isolation='none'); sb.load({'main.py': 'print(7)'})\n"
              "print(sb.run_program())\n")
    # Inside a user namespace of its own, the test may set how many nested ones are allowed: none.
    command = f"echo 0 > /proc/sys/user/max_user_namespaces && exec {PY} -c \"import sys\n{script}\""
    done = subprocess.run(["unshare", "-Ur", "sh", "-c", command], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "refused: isolation: the kernel refused the sandbox's namespaces" in done.stdout
    assert 'isolation="none"' in done.stdout
    assert "('exit 0', '7\\n')" in done.stdout  # the explicit opt-out still runs programs


def test_isolation_option_is_checked():
    with pytest.raises(ValueError, match='isolation must be "namespaces" or "none", got \'chroot\''):
        CodeSandbox(python=PY, isolation="chroot")
    with pytest.raises(ValueError, match="max_processes must be > 0"):
        CodeSandbox(python=PY, max_processes=0)
