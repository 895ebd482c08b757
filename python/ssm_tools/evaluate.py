"""Interactive evaluation: the trained model drives real tool episodes, greedily, at any size.

All n episodes of a size run as one batch through the C++ dispatch loop (`rollout`): the loop feeds
each model the next token (prompt, tool answer or its own sample) and the model keeps its recurrent
state / KV cache across calls, so an episode of length L costs L model steps, not L^2.
"""
from __future__ import annotations

import numpy as np
import torch

from .env import Env, rollout

TEST_SEED = 1234  # one test set per (size, n) for every model and training seed: curves compare


def greedy_policy(model, batch_size: int, device):
    """model_step for `rollout`: input tokens (B,) -> argmax next tokens (B,), state kept inside."""
    state = model.init_state(batch_size, device)

    @torch.no_grad()
    def model_step(tokens: torch.Tensor) -> torch.Tensor:
        nonlocal state
        logits, state = model.step(tokens.to(device=device, dtype=torch.long), state)
        return logits.argmax(-1).cpu()

    return model_step


def evaluate_size(model, task, size: int, n: int, seed: int = TEST_SEED, device="cpu") -> dict:
    rng = np.random.default_rng([seed, size])
    instances = [task.sample(rng, size) for _ in range(n)]
    env = Env(task.tools(), batch_size=n)
    model.eval()
    transcript = rollout(greedy_policy(model, n, device), env, [task.prompt(i) for i in instances],
                         max_steps=task.max_steps(size), seed=seed)
    correct = [bool(task.grade(inst, transcript.episode(i)[0])) for i, inst in enumerate(instances)]
    return {"accuracy": sum(correct) / n, "correct": sum(correct), "n": n,
            "finished": int(transcript.done.sum()), "mean_length": float(transcript.lengths.float().mean())}


def evaluate(model, task, sizes, n: int, seed: int = TEST_SEED, device="cpu") -> dict:
    """Exact-answer accuracy per size: {"accuracy": {size: acc}, "per_size": {size: details}}."""
    if not sizes or any(not isinstance(s, int) or s <= 0 for s in sizes):
        raise ValueError(f"sizes must be a non-empty list of positive ints, got {sizes!r}")
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    per_size = {s: evaluate_size(model, task, s, n, seed, device) for s in sizes}
    return {"accuracy": {s: r["accuracy"] for s, r in per_size.items()}, "per_size": per_size}
