"""Why a tiny model does not learn Tower of Hanoi's iterative trajectory: training with the accuracy of
each kind of model token logged as it goes, and where in an episode the first error falls
(results/tasks_notes.md, "Tower of Hanoi iterative: the local trajectory").

    python benchmarks/hanoi_learning.py --trajectory carried --train-max 4 --exact-sizes 4,5,6 --out c1.jsonl
    python benchmarks/hanoi_learning.py --kinds-of c1.jsonl.pt --trajectory carried --sizes 4,5,6

The training loop and its options are graph_learning.py's (AdamW, warmup then cosine, one thread);
KINDS here name what each model token of the two trajectory formats decides. `--kinds-of` prints a
saved model's teacher-forced accuracy per kind and, per size, the kind and the place (move index /
moves) of each episode's first wrong token.
"""
from __future__ import annotations

import json
from collections import Counter

import numpy as np

from graph_learning import kinds_of, parse, parser, predictions, saved_model, train
from ssm_tools import vocab as V
from ssm_tools.tasks.base import CHAR, CHAR_OF, CMD
from ssm_tools.tasks.hanoi import Hanoi

CMDS = {CMD[1, op] for op in ("read", "left", "right")}
READ = CMD[1, "read"]
FLAGS = {CHAR[c] for c in "oOeE"}
DIRECTIONS = {CHAR["+"], CHAR["-"]}
DOLLAR, CLOSE, EQ = CHAR["$"], CHAR[")"], CHAR["="]
LETTERS = {CHAR[c] for c in "ABCabc"}
KINDS = {
    # both formats
    "walk": "a pointer command while walking over the prompt or back to the state to copy",
    "parity": "carried: the initial flag o/e after the walks over the prompt; local: a disk's direction +/- "
              "(the pass over the prompt and the initial state)",
    "init": "the initial state's other tokens (disks copied from the prompt, rods, '$', [ANS])",
    "cmd": "a pointer command while copying a state (read / right)",
    "flag": "carried: the new state's flag, from the old one's",
    "label": "a disk label copied from the cell just read (local: its direction and the '$' too)",
    "rod": "a rod letter that does not change",
    "end": "after a state's '$': the next move's first command or [EOS]",
    # carried
    "move_disk": "carried: the moving disk's label in '(d)XY', from the last state",
    "move_rods": "carried: X, Y in '(d)XY'",
    "drop": "carried: the command instead of the moving disk's copy (its ')' just read)",
    "insert": "carried: the moving disk written on top of rod Y (its label from the move, far back)",
    # local
    "small": "local: the smallest disk's new rod when it moves (the next of its direction)",
    "moved": "local: the other move's disk's new rod (the first rod unlike the last written one; its next)",
    "after": "local: a rod after the move (lower case)",
}


def carried_kinds(tokens: list[int], mask: list[bool]) -> list[str | None]:
    """KINDS of the carried (paper's) trajectory, by the phase and the observation each token follows."""
    out: list[str | None] = [None] * len(tokens)
    phase, obs, first, prev = "parity", None, False, None  # parity, init, walk, move, copy
    for j in range(tokens.index(EQ) + 1, len(tokens)):
        t = tokens[j]
        if not mask[j]:
            obs, first = t, True
            continue
        if phase == "parity":
            kind = "walk" if t in CMDS else "parity"
            phase = "parity" if t in CMDS else "init"
        elif phase == "init":
            kind = "cmd" if t in CMDS else "init"
            phase = "walk" if t == V.ANS else "init"
        elif phase == "walk" and t in CMDS:
            kind = "walk"
        elif phase in ("walk", "move"):
            kind = "move_rods" if t in LETTERS else "move_disk"
            phase = "copy" if t in LETTERS and prev in LETTERS else "move"
        elif t in CMDS or t == V.EOS:
            kind = "end" if prev == DOLLAR else "drop" if first and obs == CLOSE else "cmd"
            phase = "walk" if prev == DOLLAR else "copy"
        else:
            kind = ("flag" if obs in FLAGS else "label" if obs == CLOSE
                    else "rod" if t in LETTERS or t == DOLLAR else "insert")
        out[j], first, prev = kind, False, t
    return out


def local_kinds(tokens: list[int], mask: list[bool]) -> list[str | None]:
    """KINDS of the local trajectory: before the first state's copy by phase, then by the cell read
    and what the written cell changes."""
    out: list[str | None] = [None] * len(tokens)
    phase, obs, prev, letters = "parity", None, None, 0  # letters: rods written in this state
    for j in range(tokens.index(EQ) + 1, len(tokens)):
        t = tokens[j]
        if not mask[j]:
            obs = t
            continue
        if t in CMDS or t == V.EOS:
            kind = "end" if prev == DOLLAR and phase == "copy" else "walk" if phase != "copy" else "cmd"
            phase = "copy" if phase == "seek" and obs == V.ANS else phase
        elif phase == "parity":
            kind = "init" if t == V.ANS else "parity"
            phase = "init" if t == V.ANS else "parity"
        elif phase == "init":
            kind = "parity" if t in DIRECTIONS else "init"
            phase = "seek" if t == DOLLAR else "init"
        elif t in LETTERS:
            changed = CHAR_OF[t].upper() != CHAR_OF[obs].upper()
            kind = ("small" if letters == 0 else "moved") if changed else "after" if CHAR_OF[t].islower() else "rod"
            letters += 1
        else:
            kind = "label"
            letters = 0 if t == DOLLAR else letters
        out[j], prev = kind, t
    return out


def first_errors(tokens, mask, pred, kinds_fn) -> list[tuple[str, float] | None]:
    """Per episode: (kind, moves done / moves in all) of its first wrong model token, or None."""
    out = []
    for b in range(tokens.shape[0]):
        toks, m = tokens[b].tolist(), mask[b].tolist()
        kinds = kinds_fn(toks, m)
        states = [j for j, t in enumerate(toks) if t == DOLLAR and m[j]]
        wrong = next((j for j in range(1, len(toks)) if m[j] and pred[b, j - 1] != toks[j]), None)
        out.append(None if wrong is None else
                   (kinds[wrong] or "other", round(sum(s < wrong for s in states) / max(len(states), 1), 2)))
    return out


TRAJECTORY_KINDS = {"carried": carried_kinds, "local": local_kinds}


def first_errors_of(a, task, kinds_fn) -> None:
    """For each size: the kinds of the episodes' first wrong tokens and where they fall."""
    model, rng = saved_model(a), np.random.default_rng(98)
    for size in a.sizes:
        tr, pred = predictions(model, task, rng, size)
        errors = first_errors(tr.tokens, tr.loss_mask, pred, kinds_fn)
        print(json.dumps({"size": size, "first_errors": dict(Counter(e[0] if e else "exact" for e in errors)),
                          "where": sorted(e[1] for e in errors if e)}))


def main() -> None:
    p = parser(__doc__, train_max=4)
    a = parse(p)
    task = Hanoi(a.mode, variant="iterative", trajectory=a.trajectory)
    kinds = TRAJECTORY_KINDS[task.trajectory]
    coarse = lambda k: k or "other"  # noqa: E731
    if a.kinds_of:
        kinds_of(a, task, kinds)
        first_errors_of(a, task, kinds)
    else:
        train(a, task, kinds, coarse)


if __name__ == "__main__":
    main()
