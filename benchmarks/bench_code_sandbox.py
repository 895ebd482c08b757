"""Cost of the coding task's sandbox, each against a baseline measured in the same run:

  1. one `run` of a fixed 16-function codebase: CodeSandbox.run_program in its jail of namespaces (the
     default) vs isolation="none" (mkdtemp, fork/exec with rlimits, poll, kill the group, remove; the
     sandbox before the jail), and vs the same in plain Python (tempfile + subprocess.run with the same
     interpreter flags, environment and rlimits + shutil.rmtree);
  2. oracle trajectories of the coding task through the real loop (`task.trajectories`: Python oracle
     + C++ replay whose episodes run in parallel) on all cores vs on one thread.

Prints the ratios; writes JSON (with the exact command) to --out.

    .venv/bin/python benchmarks/bench_code_sandbox.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from ssm_tools.tasks import get_task
from ssm_tools.tasks.coding import generate
from ssm_tools.tools import CodeSandbox

from _results import write_result  # benchmarks/_results.py (run as a script: its folder is on sys.path)

FLAGS = ["-E", "-S", "-B", "-u", "-X", "no_debug_ranges", "main.py"]  # as csrc/tools/code_sandbox.cpp


def median_s(fns, reps: int) -> list[float]:
    """Median wall time of each function; the functions take turns (the machine is shared: a slow
    patch must hit both sides alike)."""
    times = [[] for _ in fns]
    for rep in range(reps + 1):  # the first round warms up
        for fn, ts in zip(fns, times):
            start = time.perf_counter()
            fn()
            if rep:
                ts.append(time.perf_counter() - start)
    return [statistics.median(ts) for ts in times]


def python_run(files: dict[str, str]) -> tuple[int, str]:
    """The baseline: what run_program does, with the standard library."""
    opts = dict(cpu=2, memory=256 << 20)

    def limit():
        os.setpgid(0, 0)
        resource.setrlimit(resource.RLIMIT_CPU, (opts["cpu"], opts["cpu"] + 1))
        resource.setrlimit(resource.RLIMIT_AS, (opts["memory"], opts["memory"]))

    root = tempfile.mkdtemp(prefix="ssm_bench_")
    try:
        for name, content in files.items():
            with open(os.path.join(root, name), "w") as f:
                f.write(content)
        done = subprocess.run([sys.executable, *FLAGS], cwd=root, env={"PATH": os.environ.get("PATH", "")},
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              preexec_fn=limit, timeout=5)
        return done.returncode, done.stdout.decode()
    finally:
        shutil.rmtree(root)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    parser.add_argument("--out", default="results/bench_code_sandbox.json")
    args = parser.parse_args()
    reps, batch = (5, 8) if args.quick else (30, 32)

    files = generate(np.random.default_rng(0), 16).files(fixed=True)
    jailed, plain = CodeSandbox(python=sys.executable), CodeSandbox(python=sys.executable, isolation="none")
    for sandbox in (jailed, plain):
        sandbox.load(files)
    code, base_output = python_run(files)
    for status, output in (jailed.run_program(), plain.run_program()):
        assert status == "exit 0" and code == 0 and output == base_output, (status, output, base_output)
    jailed_s, plain_s, python_s = median_s([jailed.run_program, plain.run_program, lambda: python_run(files)], reps)
    print(f"run of a 16-function codebase: jailed {1e3 * jailed_s:.1f} ms, isolation=\"none\" {1e3 * plain_s:.1f} ms "
          f"(jail costs x{jailed_s / plain_s:.2f}), Python subprocess {1e3 * python_s:.1f} ms")

    task = get_task("coding", "interactive")
    sizes = [8] * batch
    seconds = median_s([lambda threads=threads: task.trajectories(np.random.default_rng(1), sizes, num_threads=threads)
                        for threads in (0, 1)], 1)
    rates = {threads: batch / s for threads, s in zip((0, 1), seconds)}
    print(f"interactive trajectories at 8 functions, batch {batch}: {rates[0]:.1f}/s on all cores, "
          f"{rates[1]:.1f}/s on one thread  (x{rates[0] / rates[1]:.2f})")

    write_result(args.out, {
        "run_ms": {"jailed": 1e3 * jailed_s, "isolation_none": 1e3 * plain_s, "python_subprocess": 1e3 * python_s,
                   "jailed_over_none": jailed_s / plain_s, "target_jailed_over_none": 1.5, "repetitions": reps},
        "trajectories_per_s": {"all_cores": rates[0], "one_thread": rates[1], "speedup": rates[0] / rates[1],
                               "functions": 8, "batch": batch, "mode": "interactive"},
    })


if __name__ == "__main__":
    main()
