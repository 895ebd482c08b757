"""Throughput of oracle trajectories through the real loop, per task: `task.trajectories` (Python
oracle + C++ `replay`), against a baseline measured in the same run: the same oracle scripts replayed
by `replay_reference`, the plain-Python loop (same C++ tools). Writes results/bench_tasks.json.

    .venv/bin/python benchmarks/bench_tasks.py [--quick]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from ssm_tools import tools as T
from ssm_tools.reference import replay_reference
from ssm_tools.tasks import get_task

from _results import write_result  # benchmarks/_results.py (run as a script: its folder is on sys.path)

# (name, mode, options, size, batch): the training-like sizes of each experiment.
CASES = [
    ("addition", "interactive", {}, 20, 1024),
    ("addition", "interactive", {}, 1000, 16),
    ("multiplication", "interactive", {"second_digits": 2}, 20, 512),
    ("mixture", "interactive", {"add_weight": 0.5}, 20, 512),
    ("hanoi", "interactive", {"variant": "iterative"}, 8, 32),
    ("hanoi", "interactive", {"variant": "recursive"}, 7, 64),
    ("logical_graph", "interactive", {}, 10, 512),
]
TOOL_CLASSES = {"pointer_memory": T.PointerMemory, "search_memory": T.SearchMemory, "calculator": T.Calculator}


def timed(fn, repeats: int):
    """Best wall time of `repeats` calls (the machine is shared: the best is the least disturbed)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench(name, mode, options, size, batch, repeats, baseline_episodes):
    task = get_task(name, mode, **options)
    task.max_steps(size)  # cache the budget outside the timing
    seconds, (transcript, _) = timed(lambda: task.trajectories(np.random.default_rng(0), [size] * batch), repeats)
    tokens = int(transcript.lengths.sum())
    rng = np.random.default_rng(1)
    insts = [task.sample(rng, size) for _ in range(batch)]
    oracle_s, _ = timed(lambda: [task.packed_oracle(x) for x in insts], repeats)  # what trajectories() replays
    # Baseline: the plain-Python loop on a few of the same kind of episodes.
    few = insts[:baseline_episodes]
    specs = task.tools()
    make_tools = lambda: [TOOL_CLASSES[s.name](**s.options) for s in specs]  # noqa: E731
    base_s, base = timed(lambda: replay_reference(make_tools, [task.prompt(x) for x in few],
                                                  [task.oracle(x) for x in few], max_len=task.max_steps(size)), 1)
    base_rate = len(few) / base_s
    row = {
        "task": repr(task), "size": size, "batch": batch,
        "trajectories_per_s": batch / seconds, "tokens_per_s": tokens / seconds,
        "mean_tokens": tokens / batch, "oracle_share": oracle_s / seconds,
        "baseline_trajectories_per_s": base_rate,
        "baseline_tokens_per_s": int(base.lengths.sum()) / base_s,
        "speedup_vs_baseline": (batch / seconds) / base_rate,
    }
    print(f"{row['task']:<60} size {size:>5}  {row['trajectories_per_s']:>10.1f} traj/s  "
          f"{row['tokens_per_s'] / 1e6:>6.2f} Mtok/s  oracle {100 * row['oracle_share']:>3.0f}%  "
          f"x{row['speedup_vs_baseline']:.1f} vs Python loop", flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, small baseline (smoke run)")
    parser.add_argument("--out", default="results/bench_tasks.json")
    args = parser.parse_args()
    repeats, baseline_episodes = (1, 4) if args.quick else (3, 16)
    rows = [bench(*case, repeats=repeats, baseline_episodes=baseline_episodes) for case in CASES]
    write_result(args.out, {
        "note": "best of repeats; trajectories/s of task.trajectories (oracle + C++ replay, all cores) vs "
                "the plain-Python replay_reference loop on the same kind of episodes",
        "rows": rows,
    })


if __name__ == "__main__":
    main()
