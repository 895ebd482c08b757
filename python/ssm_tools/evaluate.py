"""Interactive evaluation: the trained model drives real tool episodes, greedily, at any size.

All n episodes of a size run as one batch through the C++ dispatch loop (`rollout`): the loop feeds
each model the next token (prompt, tool answer or its own sample) and the model keeps its recurrent
state / KV cache across calls, so an episode of length L costs L model steps, not L^2.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils._pytree import tree_flatten

from .env import Env, rollout
from .models.base import check_tokens

TEST_SEED = 1234  # one test set per (size, n) for every model and training seed: curves compare


def greedy_policy(model, batch_size: int, device, cuda_graph: bool = True, tf32: bool = False):
    """model_step for `rollout`: input tokens (B,) -> argmax next tokens (B,), state kept inside.

    On a GPU, a model with a fixed-size state decodes through one captured CUDA graph per step
    (`GraphedGreedyStep`): a 24-layer Mamba step is hundreds of small kernels, whose launches from
    Python otherwise take far longer than the kernels themselves. ``tf32``: its float32 matmuls
    run on TF32 tensor cores (10-bit mantissa, finer than the bf16 the models train in; 1.5x the
    paper-scale Mamba's step at batch 100, results/bench_decode.json)."""
    if cuda_graph and torch.device(device).type == "cuda" and model.fixed_size_state:
        return GraphedGreedyStep(model, batch_size, device, tf32)
    state = model.init_state(batch_size, device)

    @torch.no_grad()
    def model_step(tokens: torch.Tensor) -> torch.Tensor:
        nonlocal state
        logits, state = model.step(tokens.to(device=device, dtype=torch.long), state)
        return logits.argmax(-1).cpu()

    return model_step


class GraphedGreedyStep:
    """Greedy decoding of a fixed-size-state model as a replayed CUDA graph. The graph reads the
    input tokens from a static buffer, runs the step, writes the new state back into the static
    state tensors and argmaxes; the tokens are checked on the host instead of inside the step."""

    def __init__(self, model, batch_size: int, device, tf32: bool = False):
        self.model = model
        self.tokens = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.state = model.init_state(batch_size, device)
        flat = tree_flatten(self.state)[0]
        initial = [t.clone() for t in flat]

        @torch.no_grad()
        def body():
            logits, new_state = model.step_unchecked(self.tokens, self.state)
            for old, new in zip(flat, tree_flatten(new_state)[0]):
                if new is not old:
                    old.copy_(new)
            return logits.argmax(-1)

        side = torch.cuda.Stream(device)  # warm-up (lazy init, autotuning) must run off the capture
        side.wait_stream(torch.cuda.current_stream(device))
        allow_tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            with torch.cuda.stream(side):
                for _ in range(2):
                    body()
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.next_tokens = body()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        for t, t0 in zip(flat, initial):  # undo the warm-up steps
            t.copy_(t0)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        check_tokens(tokens, self.model.vocab_size, 1)
        self.tokens.copy_(tokens)
        self.graph.replay()
        return self.next_tokens.cpu()


def evaluate_size(model, task, size: int, n: int, seed: int = TEST_SEED, device="cpu", tf32: bool = False) -> dict:
    rng = np.random.default_rng([seed, size])
    instances = [task.sample(rng, size) for _ in range(n)]
    env = Env(task.tools(), batch_size=n, max_len=task.max_steps(size))  # the default max_len would cut long episodes
    model.eval()
    transcript = rollout(greedy_policy(model, n, device, tf32=tf32), env, [task.prompt(i) for i in instances],
                         max_steps=task.max_steps(size), seed=seed)
    correct = [bool(task.grade(inst, transcript.episode(i)[0])) for i, inst in enumerate(instances)]
    return {"accuracy": sum(correct) / n, "correct": sum(correct), "n": n,
            "finished": int(transcript.done.sum()), "mean_length": float(transcript.lengths.float().mean())}


@torch.no_grad()
def exact_trajectory_size(model, task, size: int, n: int, seed: int = TEST_SEED, device="cpu",
                          max_tokens: int = 1 << 20) -> dict:
    """The share of the size's test episodes (the same instances as `evaluate_size`) whose whole oracle
    trajectory the model reproduces: at every position where the oracle emits a token, the model's
    argmax given the oracle's prefix is that token.

    This is exactly the set of episodes that greedy decoding plays out token for token as the oracle
    does (by induction: while its tokens match, so do the tools' answers, so its next input is the
    oracle's prefix), so it is the paper's exact-trajectory metric computed with one parallel forward
    pass per episode instead of one decode step per token: a 1,000-gate graph (539k tokens) costs a
    scan, not 539k steps. It is a lower bound on `evaluate_size`'s exact-answer accuracy (a model may
    leave the oracle's path and still answer right) and equal to it up to float rounding of near-ties
    otherwise. Episodes are batched up to `max_tokens` tokens per forward pass (at least one)."""
    rng = np.random.default_rng([seed, size])
    transcript, _ = task.trajectories(rng, [size] * n)
    tokens, mask, lengths = transcript.tokens, transcript.loss_mask, transcript.lengths
    model.eval()
    exact = torch.zeros(n, dtype=torch.bool)
    order = torch.argsort(lengths, descending=True).tolist()
    while order:
        width = int(lengths[order[0]])
        rows = order[:max(1, max_tokens // width)]
        order = order[len(rows):]
        x = tokens[rows, :width].to(device)
        learned = mask[rows, 1:width].to(device)
        wrong = (model(x[:, :-1]).argmax(-1) != x[:, 1:]) & learned
        exact[rows] = ~wrong.any(1).cpu()
    return {"exact_trajectory": float(exact.float().mean()), "exact": int(exact.sum()), "n": n,
            "mean_length": float(lengths.float().mean())}


def evaluate(model, task, sizes, n: int, seed: int = TEST_SEED, device="cpu", tf32: bool = False) -> dict:
    """Exact-answer accuracy per size: {"accuracy": {size: acc}, "per_size": {size: details}}.
    ``tf32``: decode with TF32 matmuls on a GPU (greedy_policy)."""
    if not sizes or any(not isinstance(s, int) or s <= 0 for s in sizes):
        raise ValueError(f"sizes must be a non-empty list of positive ints, got {sizes!r}")
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    per_size = {s: evaluate_size(model, task, s, n, seed, device, tf32) for s in sizes}
    return {"accuracy": {s: r["accuracy"] for s, r in per_size.items()}, "per_size": per_size}
