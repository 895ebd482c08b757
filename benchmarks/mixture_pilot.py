"""CPU pilot for the mixture's gpu_small scale: does a small Mamba learn n x 2 multiplication (trained
to 20 digits, tasks/mixture_add<w>.toml) within the sweep's step budgets, at what batch and rate?
(results/reproduction_notes.md, "The mixture in one GPU call").

    python benchmarks/mixture_pilot.py --d 128 --batch 32 --lr 5e-3 --steps 800 --out pilot.jsonl
    python benchmarks/mixture_pilot.py --tokens    # tokens per episode and per packed batch, each weight

Trains one run on one thread with the Trainer of `reproduce` (its train_step, AdamW, warmup then
cosine), and every --every steps writes one JSON line: the mean training loss over those steps,
then on --n test episodes (evaluate's TEST_SEED) of n x 2 multiplication at 20 and 40 digits the
teacher-forced exact-trajectory share and token error rate, and the decoded exact-answer accuracy
at --decode sizes. A line per step budget, so one run shows where 250 / 500 / 800 steps stand (on
this run's schedule, not a shorter run's). The model is saved in --run at the end. `--tokens`
instead prints, for every weight of the sweep, the training episodes' mean, median and longest
length (20 batches of 64 at train sizes 1..20, seed 0) and a packed batch's tokens.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from ssm_tools.config import make_eval_task, make_task
from ssm_tools.evaluate import evaluate_size_many, exact_trajectory_many
from ssm_tools.reproduce import TASKS, setting_config
from ssm_tools.train import make_trainer, pack_batch


def tokens() -> None:
    for w in TASKS["multiplication_mixture"]["sweep"]["add_weight"]:
        task = make_task(setting_config("multiplication_mixture", "interactive", {"add_weight": w, "steps": 1}))
        rng, lengths, packed = np.random.default_rng(0), [], []
        for _ in range(20):
            transcript, _ = task.trajectories(rng, [20] * 64, train=True, num_threads=1)
            lengths += transcript.lengths.tolist()
            packed.append(pack_batch(transcript.tokens, transcript.loss_mask, transcript.lengths, 1)[0].numel())
        print(json.dumps({"add_weight": w, "mean": round(float(np.mean(lengths))), "median": float(np.median(lengths)),
                          "longest": max(lengths), "packed_batch_of_64": round(float(np.mean(packed))),
                          "real_tokens_of_64": round(64 * float(np.mean(lengths)))}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=128, help="d_model")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--w", type=float, default=0, help="addition weight (a sweep point: 0, 0.33, 0.5, 0.6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--n", type=int, default=20, help="test episodes per size")
    p.add_argument("--decode", default="20", help="comma-separated sizes decoded at every report")
    p.add_argument("--run", default="/tmp/mixture_pilot", help="the run's folder (its checkpoint at the end)")
    p.add_argument("--out", help="JSON lines, one per report")
    p.add_argument("--tokens", action="store_true", help="only the episodes' lengths per weight (see above)")
    a = p.parse_args()
    if a.tokens:
        return tokens()
    if a.out is None:
        p.error("--out is required (or --tokens)")
    torch.set_num_threads(1)
    config = setting_config("multiplication_mixture", "interactive", {"add_weight": a.w, "steps": a.steps})
    trainer = make_trainer(config, "mamba", dict(d_model=a.d, n_layers=a.layers, d_state=16),
                           dict(steps=a.steps, batch_size=a.batch, lr=a.lr, warmup=a.warmup, seed=a.seed,
                                ckpt_every=10 ** 6), a.run, progress=False)
    graded = make_eval_task(config)
    t0, losses = time.perf_counter(), []
    with open(a.out, "w") as f:
        f.write(json.dumps({"args": vars(a)}) + "\n")
        while trainer.step < trainer.cfg.steps:
            losses.append(trainer.train_step()[0])
            if trainer.step % a.every and trainer.step != trainer.cfg.steps:
                continue
            trainer.model.eval()
            with torch.no_grad():
                forced = {s: exact_trajectory_many([trainer.model], graded, s, a.n)[0] for s in (20, 40)}
                decoded = {s: evaluate_size_many([trainer.model], graded, s, a.n)[0]["accuracy"]
                           for s in map(int, a.decode.split(","))}
            row = {"step": trainer.step, "loss_mean_last": round(sum(losses[-a.every:]) / len(losses[-a.every:]), 4),
                   "exact_traj": {s: r["exact_trajectory"] for s, r in forced.items()},
                   "token_error": {s: round(1 - r["token_accuracy"], 6) for s, r in forced.items()},
                   "decoded": decoded, "elapsed_s": round(time.perf_counter() - t0)}
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(json.dumps(row), flush=True)
    trainer.save()


if __name__ == "__main__":
    main()
