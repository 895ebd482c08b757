"""A training step's forward + backward for the models that train on padded rows (tiny Pythia and
LSTM, the cpu presets), on the same batches of each cpu task (reproduce's cpu recipe: its training
range and batch size) padded to the batch's longest episode and in the Trainer's length groups
(ssm_tools.train.length_groups): CPU time of this process on one thread, interleaved batch by batch.
--rules adds other grouping rules (fraction:min_saving:max_groups) to compare with the Trainer's.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_grouped_batches.py [--batches N] \\
        [--rules 0.5:0.1:4,0.25:0.1:4] [--out results/bench_grouped_batches.json]
"""
import argparse
import statistics
import time

import numpy as np
import torch

import ssm_tools.train as T
from _results import write_result  # benchmarks/_results.py (run as a script: its folder is on sys.path)
from ssm_tools import reproduce as R
from ssm_tools.config import make_task
from ssm_tools.models import build_model, preset
from ssm_tools.train import masked_loss, model_config, padded_groups

TASKS = ["hanoi_recursive", "hanoi_iterative", "logical_graph", "addition"]
# Batches per task: more where a step is short (its time is noisier on the shared machine).
BATCHES = {"hanoi_recursive": 3, "hanoi_iterative": 3, "logical_graph": 6, "addition": 12}


def rule(text):
    fraction, min_saving, max_groups = text.split(":")
    return {"GROUP_FRACTION": float(fraction), "GROUP_MIN_SAVING": float(min_saving), "MAX_GROUPS": int(max_groups)}


def task_batches(task, n):
    """`n` training batches of the task's cpu recipe (tokens, loss_mask, lengths) and the recipe."""
    spec = R.scale_spec(task, "cpu")
    config = R.setting_config(task, "interactive", None, spec.get("config"))
    batch, sizes = spec["train"]["batch_size"], config["sizes"]["train"]
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(n):
        transcript, _ = make_task(config).trajectories(rng, [sizes[1]] * batch, train=True)
        batches.append((transcript.tokens, transcript.loss_mask, transcript.lengths))
    return batches, {"batch_size": batch, "train_sizes": sizes}


def grouped(batch, constants):
    """The batch's parts under a grouping rule (None: one part padded to the longest)."""
    saved = {k: getattr(T, k) for k in constants or {}}
    for k, v in (constants or {}).items():
        setattr(T, k, v)
    try:
        return padded_groups(*batch, 1, group=constants is not None)
    finally:
        for k, v in saved.items():
            setattr(T, k, v)


def step_ms(model, parts, learned):
    """CPU ms of forward + backward over the parts (loss over the whole batch's learned count)."""
    model.zero_grad(set_to_none=True)
    t0 = time.process_time()
    loss = 0.0
    for tokens, mask in parts:
        part = masked_loss(model, tokens, mask, learned)
        part.backward()
        loss += part.item()
    return (time.process_time() - t0) * 1e3, loss


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="*", default=TASKS)
    ap.add_argument("--models", nargs="*", default=["pythia", "lstm"])
    ap.add_argument("--batches", type=int, help="batches per task, each timed once per variant (default: BATCHES)")
    ap.add_argument("--rules", default="", help="more grouping rules to compare, fraction:min_saving:max_groups,...")
    ap.add_argument("--out", default="results/bench_grouped_batches.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    trainer_rule = {k: getattr(T, k) for k in ("GROUP_FRACTION", "GROUP_MIN_SAVING", "MAX_GROUPS")}
    variants = {"padded": None, "grouped": trainer_rule}
    variants.update({f"rule {r}": rule(r) for r in args.rules.split(",") if r})
    rows = []
    for task in args.tasks:
        batches, recipe = task_batches(task, args.batches or BATCHES.get(task, 3))
        parts = {name: [grouped(b, c) for b in batches] for name, c in variants.items()}
        for model_name in args.models:
            torch.manual_seed(0)
            sizes = R.scale_spec(task, "cpu")["models"].get(model_name) or preset(model_name, "tiny")
            model = build_model(model_name, **model_config(model_name, sizes)).train()
            step_ms(model, parts["grouped"][0][-1:], 1)  # warm-up (untimed; first calls allocate): a short group
            times, losses = {k: [] for k in variants}, {k: [] for k in variants}
            for b, batch in enumerate(batches):  # interleaved: the shared machine's load hits all alike
                learned = int(batch[1][:, 1:].sum())
                for name in variants:
                    ms, loss = step_ms(model, parts[name][b], learned)
                    times[name].append(ms)
                    losses[name].append(loss)
            real = [int(b[2].sum()) for b in batches]
            row = {"task": task, "model": model_name, "model_sizes": sizes, **recipe,
                   "lengths": [sorted(b[2].tolist(), reverse=True) for b in batches],
                   "cpu_ms_mean": {k: statistics.mean(v) for k, v in times.items()}, "cpu_ms_all": times,
                   "groups": {k: [[t.shape[0] for t, _ in p] for p in parts[k]] for k in variants},
                   "positions_per_real_token": {k: statistics.mean(sum(t.numel() for t, _ in p) / r
                                                                   for p, r in zip(parts[k], real))
                                                for k in variants},
                   "max_loss_diff_vs_padded": {k: max(abs(a - b) for a, b in zip(losses[k], losses["padded"]))
                                               for k in variants}}
            row["speedup_vs_padded"] = {k: row["cpu_ms_mean"]["padded"] / v for k, v in row["cpu_ms_mean"].items()}
            print(task, model_name, {k: round(v) for k, v in row["cpu_ms_mean"].items()},
                  {k: round(v, 2) for k, v in row["speedup_vs_padded"].items()}, flush=True)
            rows.append(row)
    write_result(args.out, {"threads": 1, "rules": {k: v for k, v in variants.items() if v}, "rows": rows})


if __name__ == "__main__":
    main()
