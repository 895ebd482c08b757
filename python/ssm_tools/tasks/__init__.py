"""Task generators, oracle policies and checkers for every task of the paper.

    task = get_task("addition", mode="interactive")
    x = task.sample(rng, 20); task.prompt(x); task.oracle(x); task.grade(x, tokens, mask)
    transcript, instances = task.trajectories(rng, sizes=[5, 20])   # oracles through the real loop

See base.Task for the interface. `python -m ssm_tools.tasks show addition --size 3` prints one.
"""
from __future__ import annotations

import argparse
import ast
import importlib

from .base import Task

# name -> (module, class, fixed options). The modules import lazily: coding needs its sandbox.
TASKS: dict[str, tuple[str, str, dict]] = {
    "addition": ("addition", "Addition", {}),
    "multiplication": ("multiplication", "Multiplication", {}),
    "mixture": ("multiplication", "Mixture", {}),
    "hanoi": ("hanoi", "Hanoi", {}),
    "logical_graph": ("logical_graph", "LogicalGraph", {}),
    "coding": ("coding", "Coding", {}),
}


def get_task(name: str, mode: str = "interactive", **options) -> Task:
    """The task `name` in `mode` with its options; ValueError naming the bad field otherwise."""
    if name not in TASKS:
        raise ValueError(f"task name must be one of {sorted(TASKS)}, got {name!r}")
    module, cls, fixed = TASKS[name]
    task_cls = getattr(importlib.import_module(f".{module}", __name__), cls)
    try:
        return task_cls(mode=mode, **fixed, **options)
    except TypeError as e:  # an option the task does not have
        raise ValueError(f"{name}: bad option in {sorted(options)}: {e}") from None


__all__ = ["Task", "TASKS", "get_task", "parse_option"]


def parse_option(text: str) -> tuple[str, object]:
    """A command line's task option "key=value" (the value a Python literal, else a string), for
    argparse (`type=`)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--option must be key=value, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value  # a bare word: a string option
