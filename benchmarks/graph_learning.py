"""Why a tiny model does not learn the logical graph: training with the accuracy of each kind of model
token logged as it goes (results/tasks_notes.md, "Learning the logical graph").

    python benchmarks/graph_learning.py --labels 100 --train-max 3 --max-s 360 --out e5.jsonl
    python benchmarks/graph_learning.py --kinds-of e5.jsonl.pt --labels 100 --sizes 1,3,10
    python benchmarks/graph_learning.py --trajectory local --labels 100 --exact-sizes 3,15 --exact-every 100 \
        --out l1.jsonl

Training: AdamW, warmup then cosine (train.lr_factor), batches of `--batch` episodes of 1..train-max
gates (`--phases 300:1` trains the first 300 steps on 1 gate; `--shared`: the training graphs' task
option, the tests stay plain), one thread; `--pack` packs the episodes into rows as the Trainer does
(`--carry`: with no state reset between a row's episodes).
Every `--log-every` steps one JSON line: the loss and the teacher-forced accuracy of the label digits in
`find` calls, of the digits in thought lines, of the values (T/F) and of every other model token (with
`--pack`, of each row's first episode). At the end the model is saved (<out>.pt) and evaluated greedily with the tool (`--eval` sizes). `--exact-sizes`: the share
of exact trajectories (teacher forced, evaluate.exact_trajectory_size, `--exact-n` test episodes) at
these sizes, at the end and every `--exact-every` steps (a multiple of `--log-every`; its time is
not counted in "s"). `--kinds-of` splits the teacher-forced accuracy of a saved model finer, by what
each token copies or computes (KINDS; LOCAL_KINDS with `--trajectory local`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from ssm_tools import vocab as V
from ssm_tools.evaluate import evaluate_size, exact_trajectory_size
from ssm_tools.models import build_model
from ssm_tools.tasks.logical_graph import LogicalGraph
from ssm_tools.train import TrainConfig, lr_factor, pack_batch, param_groups

DIGITS = {V.encode(str(d))[0] for d in range(10)}
VALUES = {V.encode("T")[0], V.encode("F")[0]}  # the first letter of True / False
NEWLINE = V.encode("\n")[0]
CHARS = {V.encode(chr(c))[0] for c in range(32, 127)}  # a thought line starts with one
# The label a `find` call copies, by the event before it (thought "x from node", "node is value", a call).
KINDS = {
    "c_output": "the output, from print(...) at the prompt's end",
    "c_op1_out": "the output's first operand, from the first line of the last result",
    "c_op1_child": "a new node's first operand, from the first line of the result before its 'from' thought",
    "c_op1_back": "the parent's first operand, from the first line of the last result (after a return)",
    "c_next_op": "the next operand of the current node, whose definition is one result further back",
    "c_self": "the node just valued, from the 'is' thought before",
    "c_parent": "the parent, from the 'node from parent' line of the last result",
    "t_from_child": "x in 'x from node'", "t_from_node": "node in 'x from node'",
    "t_is_node": "node in 'node is value'", "v_is": "value in 'node is value'", "v_ans": "the answer",
}
# The same for the "local" trajectory (every copy from the last result or the model's own last line).
LOCAL_KINDS = {
    "c_output": "the output, from print(...) at the prompt's end",
    "c_needed": "the operand just asked for, from the model's own 'node needs x' line",
    "c_node": "the node whose operand was just logged, from the model's own 'node has x V' line",
    "c_back": "the node just valued, from its own 'node = V' line (phrase_back: `find needs node`)",
    "t_needs_first": "'node needs x' for a node's first operand, from its definition (first line of the result)",
    "t_needs_next": "'node needs x' for the next operand, from the definition and the last line 'node has y V'",
    "t_has_known": "'node has x' after `find x` showed x known, from the result's last line 'node needs x'",
    "t_has_up": "'parent has node' after 'node is V', from the result's line 'parent needs node'",
    "t_is_node": "node in 'node is value'", "v_has_known": "the value in 't_has_known' (x's value, negated if 'not x')",
    "v_has_up": "the value in 't_has_up' (the line before's value, negated if 'not node')",
    "v_is": "value in 'node is value' (the and / or over the result's has-lines)", "v_ans": "the answer",
}


class CarriedKinds:
    """KINDS of the carried trajectory, by the events before each call and thought line."""

    def __init__(self):
        self.events = ["prompt"]

    def call(self) -> str:
        last = self.events[-3:]
        self.events.append("C")
        return ("c_output" if last[-1] == "prompt" else "c_op1_child" if last[-1] == "from"
                else "c_self" if last[-1] == "is" else "c_parent" if last[-2] == "is"
                else "c_op1_back" if last == ["is", "C", "C"] else "c_op1_out" if last[-2] == "prompt"
                else "c_next_op")

    def thought(self, line: str):
        """(kind of a digit at offset q, kind of a value) in this thought line."""
        split = line.find(" from ")
        self.events.append("from" if split >= 0 else "is")
        if split < 0:
            return lambda q: "t_is_node", "v_is"
        return lambda q: "t_from_child" if q < split else "t_from_node", None


class LocalKinds:
    """LOCAL_KINDS, by the verb of the thought line before (needs, has, is)."""

    def __init__(self):
        self.last = "prompt"

    def call(self) -> str:
        return {"prompt": "c_output", "needs": "c_needed", "has": "c_node", "is": "c_back"}[self.last]

    def thought(self, line: str):
        verb = {"=": "is"}.get(line.split()[1], line.split()[1])  # the phrase trajectory's "node = value"
        kind = {"needs": "t_needs_next" if self.last == "has" else "t_needs_first",
                "has": "t_has_up" if self.last == "is" else "t_has_known", "is": "t_is_node"}[verb]
        self.last = verb
        return lambda q: kind, "v" + kind[1:] if verb == "has" else "v_is"


def token_kinds(tokens: list[int], mask: list[bool], trajectory: str = "local") -> list[str | None]:
    """The KINDS (carried) or LOCAL_KINDS (local trajectory) name of each position of one oracle
    episode (None: another model token or an input)."""
    kinds = CarriedKinds() if trajectory == "carried" else LocalKinds()
    out: list[str | None] = [None] * len(tokens)
    i, n = 0, len(tokens)
    while i < n:
        t = tokens[i]
        if t == V.CALL:
            kind = kinds.call()
            while tokens[i] != V.CALL_END:
                out[i] = kind if tokens[i] in DIGITS else None
                i += 1
        elif t == V.RESULT:
            while tokens[i] != V.RESULT_END:
                i += 1
        elif t == V.ANS:  # the answer, then [EOS]
            if i + 1 < n and tokens[i + 1] in VALUES:
                out[i + 1] = "v_ans"
            break
        elif mask[i] and t in CHARS:  # a thought line
            j = i
            while j < n and tokens[j] not in (NEWLINE, V.ANS):
                j += 1
            digit_kind, value_kind = kinds.thought(V.decode(tokens[i:j]))
            for q in range(i, j):
                if tokens[q] in DIGITS:
                    out[q] = digit_kind(q - i)
                elif tokens[q] in VALUES:
                    out[q] = value_kind
            i = j
        i += 1
    return out


def coarse(kind: str | None) -> str:
    return "other" if kind is None else "call_dig" if kind[0] == "c" else "value" if kind[0] == "v" else "thought_dig"


def accuracy_by(name_of, tokens, mask, pred, stats: dict, kinds_fn) -> dict:
    """Adds (right, total) per name_of(kind) over the model tokens of a batch to `stats`;
    kinds_fn(tokens, mask) names the kind of each position of one episode."""
    for b in range(tokens.shape[0]):
        toks, m = tokens[b].tolist(), mask[b].tolist()
        for j, kind in enumerate(kinds_fn(toks, m)):
            if j and m[j]:
                s = stats.setdefault(name_of(kind), [0, 0])
                s[0] += int(pred[b, j - 1] == toks[j])
                s[1] += 1
    return stats


def build(a) -> torch.nn.Module:
    cfg = dict(vocab_size=V.VOCAB_SIZE, d_model=a.d, n_layers=a.layers)
    if a.model == "mamba":
        cfg.update(d_state=a.d_state, expand=a.expand, d_conv=a.d_conv)
    return build_model(a.model, **cfg)


def saved_model(a) -> torch.nn.Module:
    """The model of --kinds-of: one saved here, or a run's checkpoint.pt (its model_state)."""
    model = build(a)
    saved = torch.load(a.kinds_of, map_location="cpu")
    model.load_state_dict(saved.get("model_state", saved))
    return model.eval()


def predictions(model, task, rng, size: int):
    """16 oracle episodes of one size and the model's teacher-forced argmax after each position."""
    tr, _ = task.trajectories(rng, [size] * 16)
    with torch.no_grad():
        return tr, model(tr.tokens[:, :-1]).argmax(-1)


def kinds_of(a, task, kinds_fn) -> None:
    model, rng = saved_model(a), np.random.default_rng(99)
    for size in a.sizes:
        tr, pred = predictions(model, task, rng, size)
        stats = accuracy_by(lambda k: k or "other", tr.tokens, tr.loss_mask, pred, {}, kinds_fn)
        print(json.dumps({"size": size, **{k: [round(r / t, 3), t] for k, (r, t) in sorted(stats.items())}}))


def train(a, task, kinds_fn, coarse_fn=coarse, test_task=None) -> None:
    """Trains on `task`; the exact-trajectory checks and the evaluation are on `test_task` (default:
    `task`)."""
    test_task = test_task or task
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    model = build(a)
    if a.init:
        model.load_state_dict(torch.load(a.init))
    cfg = TrainConfig(steps=a.steps, batch_size=a.batch, lr=a.lr, warmup=a.warmup)
    opt = torch.optim.AdamW(param_groups(model, 0.0), lr=a.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    phases = [tuple(map(int, p.split(":"))) for p in a.phases.split(",") if p]
    out = open(a.out, "w") if a.out else sys.stdout

    def log(row):
        out.write(json.dumps(row) + "\n")
        out.flush()

    log({"args": vars(a), "params": sum(p.numel() for p in model.parameters())})
    t0, stats, step = time.time(), {}, 0
    while step < a.steps and time.time() - t0 < a.max_s:
        end, top = 0, a.train_max
        for steps, size in phases:
            end += steps
            if step < end:
                top = size
                break
        sizes = [int(s) for s in rng.integers(a.train_min, top + 1, a.batch)]
        tr, _ = task.trajectories(rng, sizes)
        tokens, mask, seq_idx = tr.tokens, tr.loss_mask, None
        if a.pack:  # as the Trainer packs them (the kinds below then see each row's first episode)
            tokens, mask, seq_idx = pack_batch(tokens, mask, tr.lengths, 1)
        model.train()
        if a.carry:  # one sequence per row: an episode's state starts from the episodes before it
            seq_idx = None
        logits = model(tokens[:, :-1]) if seq_idx is None else model(tokens[:, :-1], seq_idx[:, :-1].contiguous())
        loss = F.cross_entropy(logits[mask[:, 1:]], tokens[:, 1:][mask[:, 1:]])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        accuracy_by(coarse_fn, tokens, mask, logits.argmax(-1), stats, kinds_fn)
        if step % a.log_every == 0 or step == a.steps:
            row = {"step": step, "loss": round(loss.item(), 4), "s": round(time.time() - t0, 1),
                   **{k: round(r / t, 3) for k, (r, t) in stats.items()}}
            if a.exact_every and step % a.exact_every == 0:
                t1 = time.time()
                row["exact"] = {size: exact_trajectory_size(model, test_task, size, a.exact_n)["exact_trajectory"]
                                for size in a.exact_sizes}
                t0 += time.time() - t1  # "s" counts training time only
                if a.out:  # the model as checked, for --kinds-of while the run goes on
                    torch.save(model.state_dict(), a.out + ".pt")
            log(row)
            stats = {}
    if a.out:
        torch.save(model.state_dict(), a.out + ".pt")
    final = {"steps_done": step, "train_s": round(time.time() - t0, 1)}
    for size in a.exact_sizes:
        final[f"exact_{size}"] = exact_trajectory_size(model, test_task, size, a.exact_n)["exact_trajectory"]
    for size in a.eval:
        final[size] = evaluate_size(model, test_task, size, a.n)["accuracy"]
    log({"final": final})


def parser(doc: str, train_max: int) -> argparse.ArgumentParser:
    """The options of the training loop and of --kinds-of (shared with hanoi_learning.py)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--model", default="mamba")
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--expand", type=int, default=2)
    p.add_argument("--d-conv", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--train-min", type=int, default=1)
    p.add_argument("--train-max", type=int, default=train_max)
    p.add_argument("--phases", default="", help="steps:max_size,... trained first (a curriculum)")
    p.add_argument("--mode", default="interactive")
    p.add_argument("--shared", type=float, default=0.0, help="the training graphs' task option shared (tests: 0)")
    p.add_argument("--trajectory", default="local", help="the oracle's trajectory format (logical_graph.TRAJECTORIES: local, linked, phrase, answered, ...)")
    p.add_argument("--exact-sizes", type=ints, default=[], help="sizes of the exact-trajectory checks")
    p.add_argument("--exact-every", type=int, default=0, help="check exact trajectories every k steps (0: at the end)")
    p.add_argument("--exact-n", type=int, default=32, help="episodes per exact-trajectory check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-s", type=float, default=300, help="training time limit (seconds)")
    p.add_argument("--eval", type=ints, default=[3, 10])
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--init", default="", help="start from this saved model (<out>.pt)")
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--pack", action="store_true", help="pack episodes into rows as the Trainer does (else padded)")
    p.add_argument("--carry", action="store_true",
                   help="with --pack: no state reset between a row's episodes (the model sees long contexts)")
    p.add_argument("--out", default=None, help="JSON lines file (default: stdout)")
    p.add_argument("--kinds-of", default=None,
                   help="a saved model (<out>.pt or a run's checkpoint.pt): print its accuracy per KINDS entry")
    p.add_argument("--sizes", type=ints, default=[1, 3, 10])
    return p


def ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def parse(p: argparse.ArgumentParser) -> argparse.Namespace:
    a = p.parse_args()
    if a.exact_every % a.log_every:
        p.error("--exact-every must be a multiple of --log-every")
    torch.set_num_threads(1)
    return a


def main() -> None:
    p = parser(__doc__, train_max=3)
    p.add_argument("--labels", type=int, default=10_000)
    a = parse(p)
    task = LogicalGraph(a.mode, labels=a.labels, trajectory=a.trajectory)
    kinds_fn = lambda toks, m: token_kinds(toks, m, task.trajectory)  # noqa: E731
    if a.kinds_of:
        kinds_of(a, task, kinds_fn)
    else:
        train(a, LogicalGraph(a.mode, labels=a.labels, trajectory=a.trajectory, shared=a.shared), kinds_fn,
              test_task=task)


if __name__ == "__main__":
    main()
