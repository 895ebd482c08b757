"""Interactive evaluation of several small models: jointly (evaluate.rollout_many over all of them, one
rollout; on a GPU each model's graphed step on its own stream, one host sync per step) against one
after another (rollout_many of each alone), side by side in one process, for 1, 3 and 5 fresh random
Mamba models of reproduce.SMALL_MODELS (2 x 256) on the same test instances. Reports rollout steps/s
and the joint/sequential speedup, checks that every model's transcripts are the same both ways, and
the time per step outside the model: the C++ loop with a constant policy, the policy's host work
(token check, numpy <-> torch) and, on a GPU, one policy call against its graph replay alone and
against the call before pinned buffers (pageable copies, a sync in .cpu()).

GPU (one call, about 3 minutes with the build; from the repository root of a checkout; the benchmark
runs even where a CUDA test fails, so that one call brings back both):

    python3 -m pip install --no-build-isolation --no-deps -e . -C cmake.define.SSM_TOOLS_CUDA=ON \
        -C build-dir=build/gpu && { python3 -m pytest -q tests/test_cuda_models.py; \
        python3 benchmarks/bench_eval.py --device cuda --out $OUT/bench_eval.json; }

CPU dry run (tiny sizes):

    python benchmarks/bench_eval.py --device cpu --preset tiny --models 1 3 --n 8 --size 5 \
        --out results/bench_eval_cpu.json
"""
import argparse
import time

import numpy as np
import torch

from _results import write_result  # benchmarks/_results.py (run as a script: its folder is on sys.path)
from ssm_tools import evaluate as E
from ssm_tools.env import Env, _as_int_array, rollout
from ssm_tools.models import build_model, preset
from ssm_tools.models.base import check_tokens
from ssm_tools.reproduce import SMALL_MODELS
from ssm_tools.tasks import get_task
from ssm_tools.vocab import VOCAB_SIZE


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def per_call_us(f, calls, device, blocks=5):
    """Microseconds per call of f: the fastest of `blocks` blocks (the CPU may be shared)."""
    f()
    best = float("inf")
    for _ in range(blocks):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(max(1, calls // blocks)):
            f()
        sync(device)
        best = min(best, (time.perf_counter() - t0) / max(1, calls // blocks))
    return best * 1e6


def timed_rollout(models, task, size, instances, device):
    sync(device)
    t0 = time.perf_counter()
    transcript = E.rollout_many(models, task, size, instances, device=device)
    sync(device)
    return time.perf_counter() - t0, transcript


def rows_of(transcript, j, n):
    return [transcript.episode(i) for i in range(j * n, (j + 1) * n)]


def joint_vs_sequential(models, task, size, instances, device, repeats):
    """min over repeats of the joint rollout's time and of the sum of the one-by-one rollouts' times
    (alternating which goes first); the steps each ran; whether the transcripts agree."""
    n, best_joint, best_seq, identical = len(instances), float("inf"), float("inf"), True
    for r in range(repeats):
        order = ("joint", "seq") if r % 2 == 0 else ("seq", "joint")
        for which in order:
            if which == "joint":
                seconds, joint = timed_rollout(models, task, size, instances, device)
                best_joint = min(best_joint, seconds)
                steps = int(joint.lengths.max()) - 1
            else:
                alone = [timed_rollout([m], task, size, instances, device) for m in models]
                best_seq = min(best_seq, sum(s for s, _ in alone))
                seq_steps = [int(t.lengths.max()) - 1 for _, t in alone]
        identical &= all(rows_of(joint, j, n) == rows_of(t, 0, n) for j, (_, t) in enumerate(alone))
    return {"models": len(models), "joint_seconds": best_joint, "sequential_seconds": best_seq,
            "joint_steps": steps, "sequential_steps": seq_steps,
            "joint_steps_per_s": steps / best_joint, "sequential_model_steps_per_s": sum(seq_steps) / best_seq,
            "joint_model_steps_per_s": len(models) * steps / best_joint,
            "speedup_joint_vs_sequential": best_seq / best_joint, "transcripts_identical": identical}


def host_overhead(task, instances, model, device, batch, calls):
    """Per-step costs outside the model, in microseconds."""
    prompts = [task.prompt(i) for i in instances]
    steps = 2000
    constant = torch.full((len(prompts),), ord("0") % VOCAB_SIZE, dtype=torch.long)
    env = Env(task.tools(), batch_size=len(prompts), max_len=steps + 2)
    t0 = time.perf_counter()
    rollout(lambda tokens: constant, env, prompts, max_steps=steps)
    out = {"rollout_constant_policy_us_per_step": (time.perf_counter() - t0) / steps * 1e6}
    tokens = torch.randint(0, VOCAB_SIZE, (batch,))
    host = tokens.numpy().astype(np.int32)
    out["check_tokens_us"] = per_call_us(lambda: check_tokens(tokens, VOCAB_SIZE, 1), calls, torch.device("cpu"))
    out["numpy_to_torch_us"] = per_call_us(lambda: torch.from_numpy(host).long(), calls, torch.device("cpu"))
    out["torch_to_numpy_us"] = per_call_us(lambda: _as_int_array(tokens, "out"), calls, torch.device("cpu"))
    policy = E.greedy_policy(model, batch, device)
    out["policy_call_us"] = per_call_us(lambda: policy(tokens), calls, device)
    if isinstance(policy, E.GraphedGreedyStep):
        out["graph_replay_us"] = per_call_us(policy.graph.replay, calls, device)

        def before():  # the call before pinned buffers: a pageable copy in, a synchronizing .cpu() out
            check_tokens(tokens, VOCAB_SIZE, 1)
            policy.tokens.copy_(tokens)
            policy.graph.replay()
            return policy.next_tokens.cpu()

        out["policy_call_pageable_us"] = per_call_us(before, calls, device)
        out["policy_call_minus_replay_us"] = out["policy_call_us"] - out["graph_replay_us"]
    else:
        state = model.init_state(batch, device)
        with torch.no_grad():
            out["model_step_us"] = per_call_us(lambda: E.greedy_step(model, tokens.to(device), state), calls, device)
    # Outside the model and its copies, each step: the loop and tools, the token check, the conversions.
    out["host_parts_us_per_step"] = sum(out[k] for k in ("rollout_constant_policy_us_per_step", "check_tokens_us",
                                                           "numpy_to_torch_us", "torch_to_numpy_us"))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", choices=["small", "tiny"], default="small",
                    help="small: reproduce.SMALL_MODELS' Mamba (2 x 256); tiny: the CPU preset (2 x 64)")
    ap.add_argument("--models", type=int, nargs="+", default=[1, 3, 5])
    ap.add_argument("--task", default="addition")
    ap.add_argument("--size", type=int, default=200, help="test size (the episodes' length bound)")
    ap.add_argument("--n", type=int, default=100, help="episodes per model")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--calls", type=int, default=300, help="calls per per-step timing")
    ap.add_argument("--out", default="results/bench_eval.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":  # small steps on a shared CPU: threads wait on each other more than they help
        torch.set_num_threads(1)
    sizes = SMALL_MODELS["mamba"] if args.preset == "small" else preset("mamba", "tiny")
    task = get_task(args.task)
    instances = E.sample_instances(task, args.size, args.n)

    def fresh(seed):
        torch.manual_seed(seed)
        return build_model("mamba", vocab_size=VOCAB_SIZE, **sizes).to(device).eval()

    overhead = host_overhead(task, instances, fresh(0), device, args.n, args.calls)
    print({k: round(v, 1) for k, v in overhead.items()}, flush=True)
    rows = []
    for k in args.models:
        row = joint_vs_sequential([fresh(s) for s in range(k)], task, args.size, instances, device, args.repeats)
        print({key: round(v, 3) if isinstance(v, float) else v for key, v in row.items()}, flush=True)
        rows.append(row)
    write_result(args.out, {"device": str(device), "model": {"name": "mamba", **sizes, "vocab_size": VOCAB_SIZE},
                            "task": args.task, "size": args.size, "episodes_per_model": args.n,
                            "max_steps": task.max_steps(args.size), "repeats": args.repeats,
                            "host_overhead_us": overhead, "joint_vs_sequential": rows})


if __name__ == "__main__":
    main()
