"""Trajectory pools for the coding task, each against a baseline measured in the same run:

  1. building a pool (ssm_tools.pool.build_pool: oracles and replays of interactive / single-turn
     coding episodes) on N threads vs one, per training-size range (2..max functions): episodes/s;
  2. a tiny Mamba's training steps/s drawing its batches from a pool vs building fresh oracle
     trajectories for every batch (the Trainer without a pool), steps taken in turns.

Prints the rates and ratios; writes JSON (with the exact command) to --out.

    .venv/bin/python benchmarks/bench_pool.py [--threads 2] [--max-sizes 6,16] [--quick]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from ssm_tools import pool as P
from ssm_tools.reproduce import task_config
from ssm_tools.train import make_trainer

from _results import write_result  # benchmarks/_results.py (run as a script: its folder is on sys.path)


def build_rates(mode: str, max_size: int, episodes: int, threads: list[int]) -> dict:
    """Episodes/s of the same pool built on each of `threads` (the builds take turns: the machine is shared)."""
    config = task_config("coding", mode)
    rates, tokens = {}, 0
    for t in threads:
        start = time.perf_counter()
        built = P.build_pool(config, episodes, seed=1, train_max_size=max_size, threads=t)
        rates[t] = episodes / (time.perf_counter() - start)
        tokens = int(built.lengths.sum())
    return {"episodes": episodes, "mean_tokens": tokens / episodes,
            "episodes_per_s": {str(t): round(r, 2) for t, r in rates.items()},
            "speedup": round(rates[threads[-1]] / rates[threads[0]], 2)}


def train_rates(max_size: int, batch: int, steps: int, pool_episodes: int, threads: int) -> dict:
    """Median seconds per step of a tiny Mamba from a pool and from fresh trajectories, in turns."""
    config = task_config("coding", "interactive")
    with tempfile.TemporaryDirectory() as tmp:
        path = P.save(P.build_pool(config, pool_episodes, train_max_size=max_size, threads=threads),
                      Path(tmp) / "pool.npz")
        recipe = dict(steps=10 ** 6, batch_size=batch, train_max_size=max_size, lr=1e-2, warmup=10)
        trainers = {"pool": make_trainer(config, "mamba", "tiny", {**recipe, "pool": str(path)}, Path(tmp) / "a",
                                         progress=False),
                    "fresh": make_trainer(config, "mamba", "tiny", recipe, Path(tmp) / "b", progress=False)}
        times = {k: [] for k in trainers}
        for _ in range(steps + 1):  # the first round warms up
            for name, trainer in trainers.items():
                start = time.perf_counter()
                trainer.train_step()
                times[name].append(time.perf_counter() - start)
    seconds = {k: statistics.median(v[1:]) for k, v in times.items()}
    return {"batch": batch, "steps": steps, "train_max_size": max_size, "pool_episodes": pool_episodes,
            "steps_per_s": {k: round(1 / s, 3) for k, s in seconds.items()},
            "pool_over_fresh": round(seconds["fresh"] / seconds["pool"], 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of the parallel build")
    parser.add_argument("--max-sizes", default="6,16", help="largest training sizes (functions) of the ranges")
    parser.add_argument("--quick", action="store_true", help="fewer episodes and steps (smoke run)")
    parser.add_argument("--out", default="results/bench_pool.json")
    args = parser.parse_args()
    episodes, steps = (8, 2) if args.quick else (64, 8)
    threads = sorted({1, args.threads})
    build = {}
    for mode in ("interactive", "single_turn"):
        for max_size in (int(s) for s in args.max_sizes.split(",")):
            build[f"{mode} 2..{max_size}"] = row = build_rates(mode, max_size, episodes, threads)
            print(f"pool build, {mode} 2..{max_size} functions ({row['mean_tokens']:.0f} tokens/episode): "
                  + ", ".join(f"{r} episodes/s on {t} thread(s)" for t, r in row["episodes_per_s"].items())
                  + f" (x{row['speedup']})")
    train = train_rates(6, 16, steps, 4 * episodes, args.threads)
    print(f"tiny Mamba, coding 2..6, batch 16: {train['steps_per_s']['pool']} steps/s from a pool, "
          f"{train['steps_per_s']['fresh']} fresh (x{train['pool_over_fresh']})")
    write_result(args.out, {"threads": threads, "pool_build": build, "training": train})


if __name__ == "__main__":
    main()
