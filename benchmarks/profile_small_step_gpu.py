"""How fast a small model trains on a long-episode task on one GPU, alone and side by side: should a
GPU call train its runs one after another or in parallel processes? Diagnostic, run on the device
machine:

    python3 benchmarks/profile_small_step_gpu.py --task logical_graph --batch 32 --procs 1,2,4 --profile

For each process count P it starts P processes that each train the same model (the Trainer's own
train_step, fresh batches from the task) for --seconds and reports every process's steps/s and
tokens/s (tokens without padding) and the time share spent building batches on the host; then, with
--profile, one process's step under torch.profiler (top kernels and host operators).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import time

import torch

from ssm_tools.reproduce import task_config
from sweep_recipes import BatchTimer  # benchmarks/, this script's folder
from ssm_tools.train import make_trainer


def sync(args) -> None:
    if args.device == "cuda":
        torch.cuda.synchronize()


def trainer_for(args, out):
    sizes = {"d_model": args.d_model, "n_layers": args.layers, **({"d_state": 16} if args.model == "mamba" else {})}
    train = {"steps": 10 ** 6, "batch_size": args.batch, "lr": 3e-3, "warmup": 10, "ckpt_every": 10 ** 6}
    return make_trainer(task_config(args.task, "interactive"), args.model, sizes, train, out, device=args.device,
                        progress=False)


def worker(args, rank: int, start_at: float) -> dict:
    torch.set_num_threads(2)
    trainer = trainer_for(args, f"/tmp/probe{rank}")
    for _ in range(3):  # warm-up: allocator, cuBLAS algorithm choice
        trainer.train_step()
    sync(args)
    batches = BatchTimer(trainer)
    while time.time() < start_at:  # every process measures over the same wall-clock window
        time.sleep(0.01)
    t0, steps, tokens = time.perf_counter(), 0, 0
    while time.perf_counter() - t0 < args.seconds:
        tokens += trainer.train_step()[1]
        steps += 1
    sync(args)
    dt = time.perf_counter() - t0
    return {"steps_per_s": round(steps / dt, 2), "tokens_per_s": round(tokens / dt), "batch_share": round(batches.seconds / dt, 3)}


def profile(args) -> str:
    from torch.profiler import ProfilerActivity, profile as prof
    trainer = trainer_for(args, "/tmp/probe_prof")
    for _ in range(3):
        trainer.train_step()
    sync(args)
    with prof(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == 'cuda' else [])) as p:
        for _ in range(3):
            trainer.train_step()
        sync(args)
    return (p.key_averages().table(sort_by="self_cuda_time_total" if args.device == "cuda" else "self_cpu_time_total", row_limit=15) + "\n"
            + p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="logical_graph")
    p.add_argument("--model", default="mamba")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--procs", default="1,2,4")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--warmup-seconds", type=float, default=25, help="start-up time allowed before measuring")
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    ctx = multiprocessing.get_context("spawn")
    report = {"args": vars(args), "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "by_processes": {}}
    for n in map(int, args.procs.split(",")):
        with ctx.Pool(n) as pool:
            start_at = time.time() + args.warmup_seconds  # after every process's start-up and warm-up
            rows = pool.starmap(worker, [(args, r, start_at) for r in range(n)])
        report["by_processes"][n] = {"total_tokens_per_s": sum(r["tokens_per_s"] for r in rows), "processes": rows}
        print(n, json.dumps(report["by_processes"][n]), flush=True)
    print(json.dumps(report))
    if args.profile:
        print(profile(args))


if __name__ == "__main__":
    main()
