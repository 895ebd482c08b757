"""Train several recipes of one task side by side for a fixed time each, then score them: which model
shape, learning rate and batch learn the task within a GPU call's minutes.

    python benchmarks/sweep_recipes.py --task logical_graph --seconds 300 --device cuda \
        --recipes "mamba:256x2:3e-3:32 mamba:512x4:1e-3:32 lstm:512x1:3e-3:32" \
        --sizes 10,20,50,100,1000 --n 20 --out results/logical_graph/sweep

A recipe is model:<d_model>x<layers>:<lr>:<batch>. Each recipe trains in its own process (the GPU's
large training kernels share it well) with a cosine schedule sized to its time: it measures its first
steps, then sets its step count so that training ends after `--seconds`. Then each model's exact-
trajectory score (teacher-forced, evaluate.exact_trajectory_size) at `--sizes`, and, one model at a
time while `--rollout-seconds` last, its exact-answer accuracy decoded through the tools at the
smallest size (the cross-check of the two metrics). Writes <out>/sweep.json: per recipe the steps,
tokens/s, the share of the step spent building trajectories, the loss every 10 steps, the scores.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from ssm_tools.evaluate import evaluate_size, exact_trajectory_size
from ssm_tools.reproduce import task_config
from ssm_tools.train import load_checkpoint, make_trainer

PROBE_STEPS = 10


class BatchTimer:
    """Stands in for trainer.batch and adds up the seconds spent building batches on the host."""

    def __init__(self, trainer):
        self.seconds, self.batch = 0.0, trainer.batch
        trainer.batch = self

    def __call__(self):
        t0 = time.perf_counter()
        out = self.batch()
        self.seconds += time.perf_counter() - t0
        return out


def parse(recipe: str) -> dict:
    model, shape, lr, batch = recipe.split(":")
    d_model, layers = map(int, shape.split("x"))
    sizes = {"d_model": d_model, "n_layers": layers}
    if model == "mamba":
        sizes["d_state"] = 16
    elif model in ("pythia", "mistral"):
        sizes["n_heads"] = max(1, d_model // 64)
    return {"name": recipe, "model": model, "sizes": sizes, "lr": float(lr), "batch": int(batch)}


def train_one(args, recipe: dict, out: Path) -> dict:
    torch.set_num_threads(2)
    config = task_config(args.task, args.mode)
    train = {"steps": 10 ** 6, "batch_size": recipe["batch"], "lr": recipe["lr"], "warmup": PROBE_STEPS, "seed": args.seed,
             "ckpt_every": 10 ** 6}
    trainer = make_trainer(config, recipe["model"], recipe["sizes"], train, out, device=args.device, progress=False)
    losses, started, batches = [], time.perf_counter(), BatchTimer(trainer)
    tokens = 0
    while True:
        loss, ntok = trainer.train_step()
        tokens += ntok
        if trainer.step % 10 == 0 or trainer.step == 1:
            losses.append((trainer.step, round(loss, 5)))
        spent = time.perf_counter() - started
        if trainer.step == PROBE_STEPS:  # size the schedule to the time left
            trainer.fit_steps(int(args.seconds / spent * PROBE_STEPS))
        if trainer.step >= trainer.cfg.steps:
            break
    train_s = time.perf_counter() - started
    trainer.save()
    task = trainer.task
    scores, eval_s = {}, {}
    for size in args.sizes:
        t0 = time.perf_counter()
        scores[str(size)] = exact_trajectory_size(trainer.model, task, size, args.n, device=args.device)["exact_trajectory"]
        eval_s[str(size)] = round(time.perf_counter() - t0, 1)
    return {**recipe, "steps": trainer.step, "train_seconds": round(train_s, 1), "tokens": tokens,
            "tokens_per_s": round(tokens / train_s), "batch_share": round(batches.seconds / train_s, 3),
            "final_loss": losses[-1][1] if losses else None, "loss": losses,
            "exact_trajectory": scores, "exact_trajectory_seconds": eval_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True)
    p.add_argument("--mode", default="interactive")
    p.add_argument("--recipes", required=True, help="space-separated model:<d_model>x<layers>:<lr>:<batch>")
    p.add_argument("--seconds", type=float, default=300)
    p.add_argument("--sizes", default="10,20")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rollout-seconds", type=float, default=0, help="time for the decoded cross-check")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    out = Path(args.out)
    recipes = [parse(r) for r in args.recipes.split()]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(len(recipes)) as pool:
        jobs = [pool.apply_async(train_one, (args, r, out / "runs" / r["name"].replace(":", "_"))) for r in recipes]
        results = []
        for r, job in zip(recipes, jobs):
            try:
                results.append(job.get())
            except Exception as e:  # one failing recipe must not lose the others
                results.append({**r, "error": f"{type(e).__name__}: {e}"})
            print(json.dumps({k: v for k, v in results[-1].items() if k != "loss"}), flush=True)
    deadline = time.perf_counter() + args.rollout_seconds
    config = task_config(args.task, args.mode)
    from ssm_tools.config import make_task
    task = make_task(config)
    ranked = sorted((r for r in results if "error" not in r), key=lambda r: -r["exact_trajectory"][str(args.sizes[0])])
    for r in ranked:  # the best first: the cross-check matters most where the score is high
        if time.perf_counter() > deadline:
            break
        model, _ = load_checkpoint(out / "runs" / r["name"].replace(":", "_"), args.device)
        t0 = time.perf_counter()
        res = evaluate_size(model, task, args.sizes[0], args.n, device=args.device)
        r["rollout"] = {str(args.sizes[0]): res["accuracy"], "seconds": round(time.perf_counter() - t0, 1)}
        print(r["name"], "rollout", r["rollout"], "exact trajectory", r["exact_trajectory"][str(args.sizes[0])], flush=True)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": shlex.join(["python", "benchmarks/sweep_recipes.py", *sys.argv[1:]]),
            "device": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{os.cpu_count()}"}
    (out / "sweep.json").write_text(json.dumps({**meta, "recipes": results}, indent=1))


if __name__ == "__main__":
    main()
