"""Interactive evaluation: the trained model drives real tool episodes, greedily, at any size.

All n episodes of a size run as one batch through the C++ dispatch loop (`rollout`): the loop feeds
each model the next token (prompt, tool answer or its own sample) and the model keeps its recurrent
state / KV cache across calls, so an episode of length L costs L model steps, not L^2.

Several fixed-size-state models (e.g. the seeds of one run) are evaluated in one rollout
(`evaluate_many`): the batch holds n episodes per model on the same test instances, and on a GPU each
model's graphed step is replayed on its own CUDA stream, with one host synchronization per step for
all of them. Small models are latency-bound per step (a batch of 100 costs what a batch of 1 costs),
so k models jointly cost about what one costs alone.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils._pytree import tree_flatten

from .env import Env, Transcript, rollout
from .models.base import check_tokens

TEST_SEED = 1234  # one test set per (size, n) for every model and training seed: curves compare


class EvaluationDeadline(Exception):
    """An evaluation ran past its `deadline` (a time.perf_counter() value) and was abandoned: its
    caller records the size as skipped instead of waiting for it (reproduce.sizes_within)."""


def check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.perf_counter() > deadline:
        raise EvaluationDeadline(f"past the evaluation's deadline by {time.perf_counter() - deadline:.1f} s")


def until(policy, deadline: float | None):
    """`policy` (a rollout's model_step) that raises EvaluationDeadline once `deadline` has passed."""
    if deadline is None:
        return policy

    def step(tokens):
        check_deadline(deadline)
        return policy(tokens)
    return step


def greedy_step(model, tokens: torch.Tensor, state):
    """The greedy decoding rule (its one place): one model step on token ids (B,) on the model's
    device, then the argmax of the logits (ties: the lowest id). Returns (next tokens (B,), state).
    The tokens are not checked here: callers check them on the host, which needs no device sync."""
    logits, state = model.step_unchecked(tokens, state)
    return logits.argmax(-1), state


# The matmul precisions of greedy decoding (greedy_policy's `precision`).
PRECISIONS = ("float32", "tf32", "bfloat16")


def check_precision(precision) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def decode_precision(model, precision: str) -> str:
    """The precision `model` decodes in when asked for `precision`: bfloat16 needs matmul layers to
    cast (`matmul_layers`: Mamba); the other models decode in float32 then."""
    if check_precision(precision) == "bfloat16" and not model.matmul_layers():
        return "float32"
    return precision


def greedy_policy(model, batch_size: int, device, cuda_graph: bool = True, precision: str = "float32"):
    """model_step for `rollout`: input tokens (B,) -> argmax next tokens (B,), state kept inside.

    On a GPU, a model with a fixed-size state decodes through one captured CUDA graph per step
    (`GraphedGreedyStep`): a 24-layer Mamba step is hundreds of small kernels, whose launches from
    Python otherwise take far longer than the kernels themselves.

    ``precision`` of the matmuls: "float32"; "tf32" (CUDA graphs only; elsewhere float32): float32
    matmuls on TF32 tensor cores (10-bit mantissa); "bfloat16": the body's matmuls on a copy of the
    model with bfloat16 weights (`decode_copy`), as they ran in training under bf16 autocast; norms,
    states, the residual stream and the head stay float32; a model without matmul layers to cast
    decodes in float32 (`decode_precision`). results/bench_decode.json has the speed of each and
    their argmax agreement."""
    if decode_precision(model, precision) == "bfloat16":
        model = model.decode_copy(torch.bfloat16)
    if cuda_graph and torch.device(device).type == "cuda" and model.fixed_size_state:
        return GraphedGreedyStep(model, batch_size, device, precision == "tf32")
    return EagerGreedyStep(model, batch_size, device)


class EagerGreedyStep:
    """Greedy decoding step by step from Python (CPU, or a model whose state grows)."""

    def __init__(self, model, batch_size: int, device):
        self.model, self.device = model, torch.device(device)
        self.state = model.init_state(batch_size, device)

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        check_tokens(tokens, self.model.vocab_size, 1)
        next_tokens, self.state = greedy_step(self.model, tokens.to(device=self.device, dtype=torch.long), self.state)
        return next_tokens.cpu()


class GraphedGreedyStep:
    """Greedy decoding of a fixed-size-state model as a replayed CUDA graph on a stream of its own.
    The graph copies the input tokens from a pinned host buffer, runs the step, writes the new state
    back into the static state tensors, argmaxes and copies the next tokens into a pinned host
    buffer: a step is one graph launch and one synchronization (the copies as graph nodes, not
    launches of their own); the tokens are checked on the host instead of inside the step.

    The graph is captured on its own stream (not torch's shared capture stream) because cuBLAS's
    workspace is per stream: graphs captured on one stream share it, and would race when replayed
    side by side (`JointGreedyPolicy`)."""

    def __init__(self, model, batch_size: int, device, tf32: bool = False):
        self.model = model
        self.stream = torch.cuda.Stream(device)
        self.tokens = torch.zeros(batch_size, dtype=torch.long, device=device)
        # Pinned, and alive as long as the graph, which reads and writes them at every replay.
        self.host_in = torch.zeros(batch_size, dtype=torch.long, pin_memory=True)
        self.host_out = torch.zeros(batch_size, dtype=torch.long, pin_memory=True)
        self.state = model.init_state(batch_size, device)
        flat = tree_flatten(self.state)[0]
        initial = [t.clone() for t in flat]

        @torch.no_grad()
        def body():
            self.tokens.copy_(self.host_in, non_blocking=True)
            next_tokens, new_state = greedy_step(model, self.tokens, self.state)
            for old, new in zip(flat, tree_flatten(new_state)[0]):
                if new is not old:
                    old.copy_(new)
            self.host_out.copy_(next_tokens, non_blocking=True)
            return next_tokens

        # Warm-up (lazy init, autotuning) runs on the stream before the capture, off the default stream.
        self.stream.wait_stream(torch.cuda.current_stream(device))
        allow_tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            with torch.cuda.stream(self.stream):
                for _ in range(2):
                    body()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=self.stream):
                self.next_tokens = body()  # the device copy of host_out
        finally:
            torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        with torch.cuda.stream(self.stream):
            for t, t0 in zip(flat, initial):  # undo the warm-up steps
                t.copy_(t0)
        self.stream.synchronize()

    def launch(self) -> None:
        """Queue one step on the stream: host_in -> device, the step, argmax -> host_out. Returns at
        once; host_out holds the next tokens after the stream synchronizes."""
        with torch.cuda.stream(self.stream):
            self.graph.replay()

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        check_tokens(tokens, self.model.vocab_size, 1)
        self.host_in.copy_(tokens)
        self.launch()
        self.stream.synchronize()
        return self.host_out.clone()


class JointGreedyPolicy:
    """model_step for `rollout` over len(models) x batch_size episodes: model j decodes episodes
    j * batch_size ... (j + 1) * batch_size - 1 with its own state. On a GPU, fixed-size-state models'
    graphed steps are launched on their own streams one after another (their kernels overlap) and
    the host waits once per step for all; otherwise the models step one after another."""

    def __init__(self, models, batch_size: int, device, cuda_graph: bool = True, precision: str = "float32"):
        if not models:
            raise ValueError("models must be a non-empty list")
        self.batch_size = batch_size
        self.steps = [greedy_policy(m, batch_size, device, cuda_graph, precision) for m in models]
        self.vocab_size = min(m.vocab_size for m in models)
        self.graphed = all(isinstance(s, GraphedGreedyStep) for s in self.steps)
        if self.graphed:
            self.device = torch.device(device)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        check_tokens(tokens, self.vocab_size, 1)
        if tokens.shape[0] != self.batch_size * len(self.steps):
            raise ValueError(f"tokens: expected shape ({self.batch_size * len(self.steps)},), got {tuple(tokens.shape)}")
        if not self.graphed:
            return torch.cat([step(part) for step, part in zip(self.steps, tokens.split(self.batch_size))])
        for step, part in zip(self.steps, tokens.split(self.batch_size)):
            step.host_in.copy_(part)
            step.launch()
        main = torch.cuda.current_stream(self.device)
        for step in self.steps:
            main.wait_stream(step.stream)
        main.synchronize()  # the one host sync of the step
        return torch.cat([step.host_out for step in self.steps])


def sample_instances(task, size: int, n: int, seed: int = TEST_SEED) -> list:
    """The n test instances of a size: the same for every model, seed and call."""
    rng = np.random.default_rng([seed, size])
    return [task.sample(rng, size) for _ in range(n)]


def rollout_many(models, task, size: int, instances: list, seed: int = TEST_SEED, device="cpu",
                 precision: str = "float32", deadline: float | None = None) -> Transcript:
    """Every model on the same `instances` in one rollout: model j's episode i is row j * n + i.
    (The Env seeds each episode's tools from its row, so rows past the first model's get other
    seeds than alone; no tool draws on its seed, the C++ ones and the tasks' alike.) Past `deadline`
    (time.perf_counter()) the rollout stops with EvaluationDeadline."""
    for m in models:
        m.eval()
    n, max_steps = len(instances), task.max_steps(size)
    # max_len past what max_steps can reach: the episode-length bound is the task's, not the Env's default.
    env = Env(task.tools(), batch_size=n * len(models), max_len=max_steps + 2)
    prompts = [task.prompt(i) for i in instances] * len(models)
    policy = greedy_policy(models[0], n, device, precision=precision) if len(models) == 1 else \
        JointGreedyPolicy(models, n, device, precision=precision)
    return rollout(until(policy, deadline), env, prompts, max_steps=max_steps, seed=seed)


def evaluate_size_many(models, task, size: int, n: int, seed: int = TEST_SEED, device="cpu",
                       precision: str = "float32", deadline: float | None = None) -> list[dict]:
    """evaluate_size for each model, decoded jointly (rollout_many; `deadline`: see there)."""
    instances = sample_instances(task, size, n, seed)
    transcript = rollout_many(models, task, size, instances, seed, device, precision, deadline)
    results = []
    for j in range(len(models)):
        rows = slice(j * n, (j + 1) * n)
        correct = sum(bool(task.grade(inst, transcript.episode(j * n + i)[0])) for i, inst in enumerate(instances))
        results.append({"accuracy": correct / n, "correct": correct, "n": n,
                        "finished": int(transcript.done[rows].sum()),
                        "mean_length": float(transcript.lengths[rows].float().mean())})
    return results


def evaluate_size(model, task, size: int, n: int, seed: int = TEST_SEED, device="cpu", precision: str = "float32") -> dict:
    return evaluate_size_many([model], task, size, n, seed, device, precision)[0]


def check_joint(models) -> None:
    """Several models decode jointly only with fixed-size states (a KV cache per model grows with
    the episode; Transformers are evaluated one at a time)."""
    if not isinstance(models, (list, tuple)) or not models:
        raise ValueError(f"models must be a non-empty list of models, got {models!r}")
    if len(models) > 1:
        growing = [type(m).__name__ for m in models if not m.fixed_size_state]
        if growing:
            raise ValueError(f"models: evaluate_many decodes fixed-size-state models only (Mamba, LSTM, GRU); "
                             f"evaluate {growing} one at a time with evaluate()")


def evaluate_many(models, task, sizes, n: int, seed: int = TEST_SEED, device="cpu", precision: str = "float32") -> list[dict]:
    """evaluate() for each of several fixed-size-state models, decoded jointly in one rollout per
    size (the same test instances for every model). Each model's result is the one evaluate() gives
    it alone (a model's episodes depend only on its own inputs)."""
    check_joint(models)
    if not sizes or any(not isinstance(s, int) or s <= 0 for s in sizes):
        raise ValueError(f"sizes must be a non-empty list of positive ints, got {sizes!r}")
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    per_size = {s: evaluate_size_many(models, task, s, n, seed, device, precision) for s in sizes}
    return [{"accuracy": {s: r[j]["accuracy"] for s, r in per_size.items()},
             "per_size": {s: r[j] for s, r in per_size.items()}} for j in range(len(models))]


# Tokens per teacher-forced pass (exact_trajectory_many). The deadline is checked between passes, so a
# pass must be short: a recurrent model's costs a scan over its tokens, an attention model's grows with
# the square of its episodes' length, so that a pass of many long episodes would run far past the
# deadline: about one 30k-token episode a pass.
PASS_TOKENS = 1 << 20
ATTENTION_PASS_TOKENS = 1 << 15


@torch.no_grad()

def exact_trajectory_many(models, task, size: int, n: int, seed: int = TEST_SEED, device="cpu",
                          max_tokens: int | None = None, deadline: float | None = None) -> list[dict]:
    """For each model, the share of the size's test episodes (sample_instances: the ones
    `evaluate_size` decodes) whose whole oracle trajectory the model reproduces: at every position
    where the oracle emits a token, the model's argmax given the oracle's prefix is that token. The
    oracle transcript is built once for all the models.

    This is exactly the set of episodes that greedy decoding plays out token for token as the oracle
    does (by induction: while its tokens match, so do the tools' answers, so its next input is the
    oracle's prefix), so it is the paper's exact-trajectory metric computed with one parallel forward
    pass per episode instead of one decode step per token: a 1,000-gate graph (539k tokens) costs a
    scan, not 539k steps. It is a lower bound on `evaluate_size`'s exact-answer accuracy (a model may
    leave the oracle's path and still answer right) and equal to it up to float rounding of near-ties
    otherwise. Episodes are batched up to `max_tokens` tokens per forward pass (at least one; default
    PASS_TOKENS, ATTENTION_PASS_TOKENS where a model attends over the whole episode). Past `deadline`
    (time.perf_counter()) it stops between two passes with EvaluationDeadline."""
    if max_tokens is None:
        fixed = all(getattr(m, "fixed_size_state", False) for m in models)
        max_tokens = PASS_TOKENS if fixed else ATTENTION_PASS_TOKENS
    transcript = task.oracle_transcript(sample_instances(task, size, n, seed), task.max_steps(size))
    tokens, mask, lengths = transcript.tokens, transcript.loss_mask, transcript.lengths
    order = torch.argsort(lengths, descending=True).tolist()
    batches = []
    while order:
        width = int(lengths[order[0]])
        batches.append((order[:max(1, max_tokens // width)], width))
        order = order[len(batches[-1][0]):]
    results = []
    for model in models:
        model.eval()
        exact = torch.zeros(n, dtype=torch.bool)
        wrong_tokens = 0
        for rows, width in batches:
            check_deadline(deadline)
            x = tokens[rows, :width].to(device)
            learned = mask[rows, 1:width].to(device)
            wrong = (model(x[:, :-1]).argmax(-1) != x[:, 1:]) & learned
            exact[rows] = ~wrong.any(1).cpu()
            wrong_tokens += int(wrong.sum())
        results.append({"exact_trajectory": int(exact.sum()) / n, "exact": int(exact.sum()), "n": n,
                        "token_accuracy": 1 - wrong_tokens / max(1, int(mask[:, 1:].sum())),
                        "mean_length": float(lengths.float().mean())})
    return results


def exact_trajectory_size(model, task, size: int, n: int, seed: int = TEST_SEED, device="cpu",
                          max_tokens: int | None = None) -> dict:
    """exact_trajectory_many for one model."""
    return exact_trajectory_many([model], task, size, n, seed, device, max_tokens)[0]


def evaluate(model, task, sizes, n: int, seed: int = TEST_SEED, device="cpu", precision: str = "float32") -> dict:
    """Exact-answer accuracy per size: {"accuracy": {size: acc}, "per_size": {size: details}}.
    ``precision``: the decode's matmul precision (greedy_policy)."""
    return evaluate_many([model], task, sizes, n, seed, device, precision)[0]
