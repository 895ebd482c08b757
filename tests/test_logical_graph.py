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


def next_text(word: str, result: str) -> str:
    """What the model writes after `find word` answered `result`, up to its next call (included)."""
    lines = result.replace("[BOS]", "").split("\n")
    definition = next(line for line in lines if line.startswith(f"{word} = "))
    last = lines[-1].split()
    values = re.findall(r"\b(True|False)\b", result)
    if last[1:2] == ["needs"]:  # `word` is the operand just asked for: known (its value is the last one), or to visit
        if values:
            return f"{last[0]} has {word} {values[-1]}\n[CALL]find {last[0]}[/CALL]"
        has = []
    else:  # back at `word` (its first visit, or an operand just logged)
        has = [line.split()[-1] == "True" for line in lines if line.startswith(f"{word} has ")]
    gate = definition.split(" = ")[1]
    op = "and" if " and " in gate else "or"
    literals = gate.split(f" {op} ")
    if len(has) < len(literals):
        operand = literals[len(has)].split()[-1]
        return f"{word} needs {operand}\n[CALL]find {operand}[/CALL]"
    terms = [v != literal.startswith("not ") for v, literal in zip(has, literals)]
    value = str(all(terms) if op == "and" else any(terms))
    if f"print({word})" in lines:
        return f"{word} is {value}\n[ANS]{value}[EOS]"
    parent = next(p[0] for p in map(str.split, lines) if p[1:] == ["needs", word])
    return f"{word} is {value}\n{parent} has {word} {value}\n[CALL]find {parent}[/CALL]"


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
