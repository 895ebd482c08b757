"""python -m ssm_tools.tasks show <task> [--size N] [--mode M] [--seed S] [--option key=value ...]

Prints one oracle trajectory as the real loop produced it: model tokens plain, forced tokens
(prompt, tool answers) in «», then its length."""
from __future__ import annotations

import argparse

import numpy as np

from .. import vocab as V
from . import TASKS, get_task, parse_option


def readable(tokens: list[int], mask: list[bool]) -> str:
    """Model tokens as they are, each run of forced tokens inside «»."""
    out, forced = [], False
    for t, model in zip(tokens, mask):
        if forced == model:  # the run changes
            out.append("»" if forced else "«")
            forced = not model
        out.append(V.token_name(t))
    return "".join(out) + ("»" if forced else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ssm_tools.tasks")
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print one oracle trajectory")
    show.add_argument("task", choices=sorted(TASKS))
    show.add_argument("--size", type=int, default=3)
    show.add_argument("--mode", default="interactive")
    show.add_argument("--seed", type=int, default=0)
    show.add_argument("--option", type=parse_option, action="append", default=[],
                      help="task option, e.g. second_digits=2, variant=recursive, add_weight=0.5")
    args = parser.parse_args(argv)
    try:
        task = get_task(args.task, args.mode, **dict(args.option))
        transcript, _ = task.trajectories(np.random.default_rng(args.seed), [args.size])
    except ValueError as e:
        parser.error(str(e))
    tokens, mask = transcript.episode(0)
    print(readable(tokens, mask))
    print(f"\n{task}, size {args.size}: {len(tokens)} tokens ({sum(mask)} model, {len(tokens) - sum(mask)} forced)")


if __name__ == "__main__":
    main()
