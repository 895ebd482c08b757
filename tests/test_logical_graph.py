"""The logical graph's "local" trajectory: every model line follows from the latest `find` result and
the model's own call alone. A policy that sees nothing else (`next_text` below, written from the
format's description, not from the oracle's code) reproduces the whole oracle trajectory, up to
1,000 gates and with short labels (many shared variables, labels that are prefixes of others)."""
import re

import numpy as np
import pytest

from ssm_tools import vocab as V
from ssm_tools.tasks import get_task
from ssm_tools.tasks.base import expected_stream

SEGMENT = re.compile(r"\[CALL\]find (\w+)\[/CALL\]\[RESULT\](.*?)\[/RESULT\]", re.S)


def literal_value(literal: str, value: str) -> str:
    return str((value == "True") != literal.startswith("not "))


def next_text(word: str, result: str) -> str:
    """What the model writes after `find word` answered `result`, up to its next call (included)."""
    lines = result.replace("[BOS]", "").split("\n")
    definition = next(line for line in lines if line.startswith(f"{word} = "))
    last = lines[-1].split()
    if last[1:2] == ["needs"]:  # `word` is the operand just asked for: known, or to visit
        node, literal = last[0], " ".join(last[2:])
        rhs = definition.split(" = ")[1]
        known = [line.split()[2] for line in lines if line.startswith(f"{word} is ")]
        value = rhs if rhs in ("True", "False") else known[0] if known else None
        if value is not None:
            return f"{node} has {literal} {literal_value(literal, value)}\n[CALL]find {node}[/CALL]"
        has = []
    else:  # back at `word` (its first visit, or an operand just logged)
        has = [line.split()[-1] for line in lines if line.startswith(f"{word} has ")]
    gate = definition.split(" = ")[1]
    op = "and" if " and " in gate else "or"
    literals = gate.split(f" {op} ")
    if len(has) < len(literals):
        literal = literals[len(has)]
        return f"{word} needs {literal}\n[CALL]find {literal.split()[-1]}[/CALL]"
    values = [v == "True" for v in has]
    value = str(all(values) if op == "and" else any(values))
    if f"print({word})" in lines:
        return f"{word} is {value}\n[ANS]{value}[EOS]"
    parent, literal = next((p[0], " ".join(p[2:])) for p in map(str.split, lines)
                           if p[1:2] == ["needs"] and p[-1] == word)
    return f"{word} is {value}\n{parent} has {literal} {literal_value(literal, value)}\n[CALL]find {parent}[/CALL]"


@pytest.mark.parametrize("labels,sizes", [(10_000, [1, 2, 5, 20, 100, 1000]), (40, [1, 3, 10, 37])])
def test_local_trajectory_follows_from_the_latest_result_alone(labels, sizes, rng):
    task = get_task("logical_graph", labels=labels, trajectory="local")
    for size in sizes:
        x = task.sample(rng, size)
        stream = V.decode(expected_stream(task.script(x)))
        calls = list(SEGMENT.finditer(stream))
        assert len(calls) >= size
        assert stream.startswith(f"[CALL]find {x.output}[/CALL]")
        for call, after in zip(calls, calls[1:] + [None]):
            written = stream[call.end():after.start() + len(f"[CALL]find {after[1]}[/CALL]")
                             if after else len(stream)]
            assert written == next_text(call[1], call[2]), (size, call[1])
        assert stream.endswith(f"[ANS]{x.evaluate()}[EOS]")


def test_carried_trajectory_is_the_original_format(rng):
    """The first format stays selectable (the earlier GPU runs used it): "x from node" lines, no
    "needs" / "has" lines."""
    x = get_task("logical_graph").sample(rng, 8)
    carried = V.decode(expected_stream(get_task("logical_graph", trajectory="carried").script(x)))
    local = V.decode(expected_stream(get_task("logical_graph", trajectory="local").script(x)))
    assert " from " in carried and " needs " not in carried and " has " not in carried
    assert " needs " in local and " from " not in local
