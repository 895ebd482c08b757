"""The CPU reproduction's Mamba (tiny preset, 2 x 64) against its code at an earlier commit, side by
side in one process from the same weights: a training step (batch 32, 216 positions, AdamW) and a
decode step (batch 100), CPU time of this process on one thread (the shared machine's load moves wall
times several-fold; CPU time much less). The earlier models/mamba.py is read with `git show`.
Then the current model's training step on real task batches (--tasks, --task-batch episodes, the
Trainer's packed rows against the same episodes padded to the longest): "task_batches".

    python benchmarks/bench_cpu_mamba_step.py [--baseline 99690b5] [--out results/bench_cpu_mamba_step.json]
"""
import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _results import write_result  # benchmarks/_results.py (run as a script: its folder is on sys.path)
from bench_train_step import task_batches
from ssm_tools import vocab as V
from ssm_tools.models import build_model, preset
from ssm_tools.train import PACK_EPISODES, masked_loss


def baseline_module(commit):
    """models/mamba.py at `commit`, imported as a module of the installed package (its relative imports
    resolve against the current ssm_tools)."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{commit}:python/ssm_tools/models/mamba.py"], cwd=root, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "mamba_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("ssm_tools.models.mamba_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def cpu_ms(fn, reps):
    t0 = time.process_time()
    for _ in range(reps):
        fn()
    return (time.process_time() - t0) / reps * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="99690b5", help="commit whose models/mamba.py is the baseline")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--tasks", nargs="*", default=["addition", "multiplication_nx2"])
    ap.add_argument("--task-batch", type=int, default=32, help="episodes per task batch (the CPU configs' batch)")
    ap.add_argument("--out", default="results/bench_cpu_mamba_step.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = dict(preset("mamba", "tiny"), vocab_size=V.VOCAB_SIZE)
    models = {"current": build_model("mamba", **cfg)}
    models["baseline"] = baseline_module(args.baseline).Mamba(**cfg)
    models["baseline"].load_state_dict(models["current"].state_dict())
    tokens = torch.randint(0, V.VOCAB_SIZE, (32, 217))
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-3) for k, m in models.items()}

    def train_step(name):
        m = models[name]
        loss = torch.nn.functional.cross_entropy(m(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        opts[name].zero_grad()
        loss.backward()
        opts[name].step()
        return loss.item()

    losses = {k: train_step(k) for k in models}  # same weights, same batch: the same loss
    decode_tokens = torch.randint(0, V.VOCAB_SIZE, (100,))
    states = {k: m.init_state(100) for k, m in models.items()}

    def decode_step(name):
        with torch.no_grad():
            _, states[name] = models[name].step(decode_tokens, states[name])

    times = {f"{what}_{k}": [] for what in ("train", "decode") for k in models}
    for _ in range(args.rounds):  # interleaved, so that load changes hit both alike
        for k in models:
            times[f"train_{k}"].append(cpu_ms(lambda: train_step(k), 1))
            times[f"decode_{k}"].append(cpu_ms(lambda: decode_step(k), 30))
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {"model": {"name": "mamba", **cfg}, "baseline_commit": args.baseline, "threads": 1,
              "train_batch": list(tokens[:, :-1].shape), "decode_batch": 100, "first_losses": losses,
              "cpu_ms_median": median, "cpu_ms_all": times,
              "speedup_train_vs_baseline": median["train_baseline"] / median["train_current"],
              "speedup_decode_vs_baseline": median["decode_baseline"] / median["decode_current"]}
    print({k: round(v, 2) for k, v in median.items()}, "train x%.2f decode x%.2f" % (
        result["speedup_train_vs_baseline"], result["speedup_decode_vs_baseline"]))
    result["task_batches"] = [task_row(models["current"], name, args) for name in args.tasks]
    write_result(args.out, result)


def task_row(model, name, args):
    """CPU ms of a training step (forward + backward) on packed and on padded rows of the same
    episodes, interleaved, one batch per round; packed and padded losses agree."""
    packed, padded, real, sizes = task_batches(name, args.task_batch, args.rounds, torch.device("cpu"))
    times = {"packed": [], "padded": []}
    losses = {}

    def step(kind, batch):
        loss = masked_loss(model, *batch[:2], seq_idx=batch[2] if len(batch) == 3 else None)
        loss.backward()
        losses.setdefault(kind, []).append(loss.item())

    for pk, pd in zip(packed, padded):
        times["packed"].append(cpu_ms(lambda: step("packed", pk), 1))
        times["padded"].append(cpu_ms(lambda: step("padded", pd), 1))
    model.zero_grad(set_to_none=True)
    median = {k: statistics.median(v) for k, v in times.items()}
    row = {"task": name, "train_sizes": sizes, "episodes_per_step": args.task_batch, "pack_episodes": PACK_EPISODES,
           "real_tokens_per_step": statistics.mean(real),
           "packed_tokens_per_real_token": statistics.mean(b[0].numel() / r for b, r in zip(packed, real)),
           "padded_tokens_per_real_token": statistics.mean(b[0].numel() / r for b, r in zip(padded, real)),
           "cpu_ms_median": median, "cpu_ms_all": times,
           "max_loss_diff_packed_vs_padded": max(abs(a - b) for a, b in zip(losses["packed"], losses["padded"])),
           "speedup_packed_vs_padded": median["padded"] / median["packed"]}
    print(f"{name}: packed {median['packed']:.1f} ms, padded {median['padded']:.1f} ms, "
          f"x{row['speedup_packed_vs_padded']:.2f}")
    return row


if __name__ == "__main__":
    main()
