"""The dispatch loop with a real model: `rollout` (C++ loop, one batched Mamba decode step per batch
step) against plain-Python loops around the same model and the same C++ tools:
  * python_batched: the same batched model step, then each episode's protocol handled in Python;
  * python_per_episode: the straightforward loop, one episode at a time (model step at batch 1).
Workload: addition prompts of 20 digits with the pointer memory, an untrained Mamba decoding greedily
for a fixed number of steps (throughput, not accuracy). Tokens/s and ratios; JSON into results/.

    python benchmarks/bench_rollout_model.py --device cuda [--episodes 4096 --steps 128 --scale tiny]
"""
import argparse
import time
from collections import deque

import numpy as np
import torch

from ssm_tools import vocab as V
from ssm_tools.env import Env, rollout
from ssm_tools.reference import ReferenceParser
from ssm_tools.evaluate import greedy_policy
from ssm_tools.models import build_model, preset
from ssm_tools.tasks import get_task
from ssm_tools.tools import PointerMemory

from _results import write_result  # benchmarks/_results.py (run as a script: its folder is on sys.path)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def python_loop(model, prompts, steps, device):
    """Plain Python: batched model step, then every episode's forced queue and parser in Python."""
    parsers, queues = [], []
    for p in prompts:
        parser = ReferenceParser([PointerMemory(num_pointers=2)], 4096, 1 << 16)
        parser.reset(list(p), 0)
        parsers.append(parser)
        queues.append(deque(p[1:]))
    step = greedy_policy(model, len(prompts), device)
    inputs, done, tokens = torch.tensor([p[0] for p in prompts]), [False] * len(prompts), 0
    for _ in range(steps):
        samples = step(inputs).tolist()
        nxt = []
        for i, s in enumerate(samples):
            if done[i]:
                nxt.append(V.PAD)
                continue
            if queues[i]:
                t = queues[i].popleft()
            else:
                t = s
                answer, done[i] = parsers[i].feed(t)
                queues[i].extend(answer)
            nxt.append(t)
            tokens += 1
        inputs = torch.tensor(nxt)
    return tokens


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--episodes", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--scale", default="tiny", choices=["tiny", "paper"])
    ap.add_argument("--per-episode", type=int, default=4, help="episodes the per-episode baseline runs")
    ap.add_argument("--out", default="results/bench_rollout_model.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model("mamba", **dict(preset("mamba", args.scale), vocab_size=V.VOCAB_SIZE)).to(device).eval()
    task = get_task("addition")
    rng = np.random.default_rng(0)
    prompts = [task.prompt(task.sample(rng, 20)) for _ in range(args.episodes)]

    warm = min(64, args.episodes)
    rollout(greedy_policy(model, warm, device), Env(task.tools(), batch_size=warm), prompts[:warm], max_steps=8)  # warm-up
    cpp_s, tr = timed(lambda: rollout(greedy_policy(model, args.episodes, device), Env(task.tools(), batch_size=args.episodes),
                                      prompts, max_steps=args.steps), device)
    cpp_tokens = int(tr.lengths.sum())
    py_s, py_tokens = timed(lambda: python_loop(model, prompts, args.steps, device), device)
    few = prompts[:args.per_episode]
    one_s, one_tokens = timed(lambda: sum(python_loop(model, [p], args.steps, device) for p in few), device)
    rates = {"rollout_cpp": cpp_tokens / cpp_s, "python_batched": py_tokens / py_s, "python_per_episode": one_tokens / one_s}
    result = {
        "device": str(device), "model": {"name": "mamba", "scale": args.scale, **preset("mamba", args.scale)},
        "episodes": args.episodes, "steps": args.steps, "per_episode_baseline_episodes": args.per_episode,
        "tokens_per_s": rates,
        "speedup_vs_python_batched": rates["rollout_cpp"] / rates["python_batched"],
        "speedup_vs_python_per_episode": rates["rollout_cpp"] / rates["python_per_episode"],
    }
    for k, v in rates.items():
        print(f"{k:<20} {v:>12.0f} tokens/s")
    print(f"rollout vs Python loop (batched model step): x{result['speedup_vs_python_batched']:.1f}; "
          f"vs one episode at a time: x{result['speedup_vs_python_per_episode']:.0f}")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
