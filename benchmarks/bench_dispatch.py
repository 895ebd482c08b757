"""Dispatch-loop throughput: the C++ loop (replay, rollout) against a plain-Python loop that drives the
same episodes one at a time through the same C++ tools (ssm_tools.reference.replay_reference).

Workload: addition episodes "a+b=" with a scripted two-pointer oracle (walk pointer 1 to '+' and
pointer 2 to '=', then per digit: move both left, read both, write sum digit and carry as thoughts;
[ANS]; the sum; [EOS]). rollout is driven by a teacher-forced model_step that returns the replayed
transcript's next column, so all three loops produce the same transcript (checked).

    python benchmarks/bench_dispatch.py [--episodes 4096] [--max-digits 20] [--out results/bench_dispatch.json]
"""
import argparse
import time

import numpy as np
import torch

from _results import write_result

from ssm_tools.env import Env, ToolSpec, replay, rollout
from ssm_tools.reference import replay_reference
from ssm_tools.tools import PointerMemory
from ssm_tools.vocab import ANS, EOS, encode, pointer_cmd


def addition_oracle(a: str, b: str) -> list[int]:
    """The model tokens of the two-pointer addition algorithm (the forced reads are the loop's)."""
    p1 = lambda op: pointer_cmd(0, op)  # noqa: E731
    p2 = lambda op: pointer_cmd(1, op)  # noqa: E731
    script = [p1("right")] * len(a) + [p2("right")] * (len(a) + 1 + len(b))
    carry, digits = 0, []
    for i in range(max(len(a), len(b))):
        da = int(a[-1 - i]) if i < len(a) else 0
        db = int(b[-1 - i]) if i < len(b) else 0
        script += [p1("left"), p1("read"), p2("left"), p2("read")]
        carry, digit = divmod(da + db + carry, 10)
        digits.append(str(digit))
        script += encode(f"{digit}{carry}")
    total = ("1" if carry else "") + "".join(reversed(digits))
    return script + [ANS, *encode(total), EOS]


def make_episodes(n: int, max_digits: int, seed: int):
    rng = np.random.default_rng(seed)
    prompts, scripts = [], []
    for _ in range(n):
        a, b = ("".join(map(str, rng.integers(0, 10, size=int(rng.integers(1, max_digits + 1))))) for _ in range(2))
        prompts.append(encode(f"{a}+{b}="))
        scripts.append(addition_oracle(a, b))
    return prompts, scripts


def best_time(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=4096)
    parser.add_argument("--max-digits", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="C++ runs; the time reported is the best")
    parser.add_argument("--threads", type=int, default=0, help="C++ loop threads (0: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/bench_dispatch.json")
    args = parser.parse_args()

    prompts, scripts = make_episodes(args.episodes, args.max_digits, args.seed)
    env = Env([ToolSpec("pointer_memory", num_pointers=2)], batch_size=args.episodes, num_threads=args.threads)

    t_python, reference = best_time(
        lambda: replay_reference(lambda: [PointerMemory(num_pointers=2)], prompts, scripts), 1)
    t_replay, replayed = best_time(lambda: replay(env, prompts, scripts), args.repeats)

    def run_rollout():
        tokens, step = replayed.tokens, [0]

        def model_step(inputs: torch.Tensor) -> torch.Tensor:
            step[0] += 1
            return tokens[:, min(step[0], tokens.shape[1] - 1)]

        return rollout(model_step, env, prompts, max_steps=tokens.shape[1])

    t_rollout, rolled = best_time(run_rollout, args.repeats)

    for other in (reference, rolled):  # the three loops must agree before their speeds mean anything
        assert torch.equal(other.tokens, replayed.tokens) and torch.equal(other.loss_mask, replayed.loss_mask)
    assert replayed.done.all()
    tokens = int(replayed.lengths.sum())
    result = {
        "episodes": args.episodes,
        "max_digits": args.max_digits,
        "tokens": tokens,
        "rollout_steps": int(replayed.tokens.shape[1]) - 1,
        "threads": env.num_threads,
        "python_loop_s": t_python,
        "replay_s": t_replay,
        "rollout_s": t_rollout,
        "python_loop_tokens_per_s": tokens / t_python,
        "replay_tokens_per_s": tokens / t_replay,
        "rollout_tokens_per_s": tokens / t_rollout,
        "replay_speedup": t_python / t_replay,
        "rollout_speedup": t_python / t_rollout,
    }
    print(f"{args.episodes} addition episodes, {tokens} tokens, {env.num_threads} C++ threads")
    for name in ("python_loop", "replay", "rollout"):
        print(f"  {name:12s} {result[name + '_s']:8.3f} s  {result[name + '_tokens_per_s'] / 1e6:8.2f} M tokens/s")
    print(f"  replay  vs python loop: {result['replay_speedup']:.1f}x")
    print(f"  rollout vs python loop: {result['rollout_speedup']:.1f}x")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
