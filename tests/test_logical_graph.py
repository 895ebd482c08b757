"""The logical graph's "local", "linked" and "phrase" trajectories: every model line follows from the latest
`find` result and the model's own call alone (phrase: and its own latest line). A policy that sees nothing else (`next_text` below, written from the
format's description, not from the oracle's code) reproduces the whole oracle trajectory, up to
1,000 gates and with short labels (many shared variables, labels that are prefixes of others)."""
import re

import pytest

from ssm_tools import vocab as V
from ssm_tools.tasks import get_task
from ssm_tools.tasks.base import expected_stream

SEGMENT = re.compile(r"\[CALL\]find (\w+)\[/CALL\]\[RESULT\](.*?)\[/RESULT\]", re.S)


def literal_value(literal: str, value: str) -> str:
    return str((value == "True") != literal.startswith("not "))


def gate_step(word: str, rhs: str, has: list[str], back: str = "") -> tuple[str | None, str | None]:
    """(the next "needs" line and its call, None) while gate `word` (right side `rhs`) has operands
    without a has-line (their values `has`), else (None, its value)."""
    op = "and" if " and " in rhs else "or"
    literals = rhs.split(f" {op} ")
    if len(has) < len(literals):
        literal = literals[len(has)]
        return f"{word} needs {literal}{back}\n[CALL]find {literal.split()[-1]}[/CALL]", None
    values = [v == "True" for v in has]
    return None, str(all(values) if op == "and" else any(values))


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
    needs, value = gate_step(word, definition.split(" = ")[1], has)
    if needs:
        return needs
    if f"print({word})" in lines:
        return f"{word} is {value}\n[ANS]{value}[EOS]"
    parent, literal = next((p[0], " ".join(p[2:])) for p in map(str.split, lines)
                           if p[1:2] == ["needs"] and p[-1] == word)
    return f"{word} is {value}\n{parent} has {literal} {literal_value(literal, value)}\n[CALL]find {parent}[/CALL]"


def next_text_linked(word: str, result: str) -> str:
    """The same for the "linked" trajectory: the way back is the link a node's own lines end with, and
    a variable is known when the result holds its "is" line (inputs are visited too)."""
    lines = result.replace("[BOS]", "").split("\n")
    rhs = next(line for line in lines if line.startswith(f"{word} = ")).split(" = ")[1]
    last = lines[-1].split()
    if last[1:2] == ["needs"] and last[-1].startswith("^"):
        last = last[:-1]  # the asking node's own link
    if last[1:2] == ["needs"] and last[-1] == word:  # `word` is the operand just asked for
        node, literal = last[0], " ".join(last[2:])
        known = [line.split()[2] for line in lines if line.startswith(f"{word} is ")]
        if known:
            return f"{node} has {literal} {literal_value(literal, known[0])}\n[CALL]find {node}[/CALL]"
        back, has = f" ^{'!' if literal.startswith('not ') else ''}{node[1:]}", []
    else:  # back at `word` after an operand was logged: its link is the latest in the result
        back = next((" " + line.split()[-1] for line in reversed(lines) if line.split()[-1].startswith("^")), "")
        has = [line.split()[-1] for line in lines if line.startswith(f"{word} has ")]
    if rhs in ("True", "False"):  # an input
        value = rhs
    else:
        needs, value = gate_step(word, rhs, has, back)
        if needs:
            return needs
    if not back:
        return f"{word} is {value}\n[ANS]{value}[EOS]"
    negated = back.startswith(" ^!")
    parent, literal = "v" + back[3 if negated else 2:], ("not " if negated else "") + word
    has_line = f"{parent} has {literal} {literal_value(literal, value)}"
    return f"{word} is {value}{back}\n{has_line}\n[CALL]find {parent}[/CALL]"


def split_needs(line: str) -> tuple[str, list[str], str]:
    """A "needs" line: its node, its literals and operators, its link (" ^..." or "")."""
    words = line.split()
    back = " " + words.pop() if words[-1].startswith("^") else ""
    return words[0], words[2:], back


def next_text_phrase(query: str, result: str, own: str | None, by_search: bool = False, before: str = "") -> str:
    """The same for the "phrase" trajectory, from the latest result and the model's own latest line
    (`own`: None before its first): what it writes after a search up to its next call (included).
    `by_search`: "phrase_back", whose links hold no number and whose literal values are known from
    the model's own value line or the result `before` the latest."""
    lines = result.replace("[BOS]", "").split("\n")
    if query.startswith("needs "):  # the asking node's latest "needs" line last
        literal = query.removeprefix("needs ")
        if own.split()[1] == "=":  # back from the literal's visit: its own "x = V ^[!]"
            value = own.split()[2]
        else:  # `find x =` answered its value line just before
            value = before.split("\n")[-1].split()[2]
        node, terms, back = split_needs(lines[-1])
        return decide(node, terms, literal_value(literal, value), back, by_search)
    word, verb = query.rsplit(" ", 1)
    if verb == "=":  # the definition of the literal the model's own "needs" line asks for, then its value
        rhs = lines[-1].split(" = ")[1].split(" ^")[0]
        if rhs in ("True", "False"):
            node, terms, _ = split_needs(own)
            literal = " ".join(terms[:2] if terms[0] == "not" else terms[:1])
            if by_search:
                return f"[CALL]find needs {literal}[/CALL]"
            return f"{node} has {literal} {literal_value(literal, rhs)}\n[CALL]find {node} needs[/CALL]"
        back = ""
        if own is not None:
            node, terms, _ = split_needs(own)
            back = f" ^{'!' if terms[0] == 'not' else ''}{'' if by_search else node[1:]}"
        return f"{word} needs {rhs}{back}\n[CALL]find {rhs.split()[1 if rhs.startswith('not ') else 0]} =[/CALL]"
    node, terms, back = split_needs(lines[-1])  # back at a node: its latest "needs" line
    return decide(node, terms, own.split()[-1], back, by_search)  # the value: its has-line's


def decide(node: str, terms: list[str], value: str, back: str, by_search: bool) -> str:
    """What the phrase trajectories write at `node`, whose literals left are `terms`, once the first
    one's value is known: the next literal's search, or the node's value line and the way back."""
    rest = terms[2 if terms[0] == "not" else 1:]
    if rest and (rest[0] == "and") == (value == "True"):
        return f"{node} needs {' '.join(rest[1:])}{back}\n[CALL]find {rest[-1]} =[/CALL]"
    if not back:
        return f"{node} = {value}\n[ANS]{value}[EOS]"
    negated = back.startswith(" ^!")
    literal = ("not " if negated else "") + node
    if by_search:
        return f"{node} = {value}{back}\n[CALL]find needs {literal}[/CALL]"
    return (f"{node} = {value}{back}\nv{back.lstrip(' ^!')} has {literal} {literal_value(literal, value)}"
            f"\n[CALL]find v{back.lstrip(' ^!')} needs[/CALL]")


@pytest.mark.parametrize("trajectory", ["phrase", "phrase_back"])
def test_phrase_trajectory_follows_from_the_latest_result_and_own_line(trajectory, rng):
    """Every search of the "phrase" trajectory answers at most two lines whatever the graph's size,
    and what the model writes follows from that answer and its own latest line alone."""
    segment = re.compile(r"\[CALL\]find ([^[]*)\[/CALL\]\[RESULT\](.*?)\[/RESULT\]", re.S)
    for labels, sizes in ((10_000, [1, 2, 5, 20, 100, 1000]), (40, [1, 3, 10, 37])):
        task = get_task("logical_graph", labels=labels, trajectory=trajectory)
        for size in sizes:
            x = task.sample(rng, size)
            stream = V.decode(expected_stream(task.script(x)))
            calls, own, before = list(segment.finditer(stream)), None, ""
            assert stream.startswith(f"[CALL]find {x.output} =[/CALL]")
            for call, after in zip(calls, calls[1:] + [None]):
                written = stream[call.end():after.start() + len(f"[CALL]find {after[1]}[/CALL]") if after else len(stream)]
                assert call[2].count("\n") <= 1 or call[1].startswith("needs ")  # (one line per asker)
                assert written == next_text_phrase(call[1], call[2], own, trajectory == "phrase_back", before), \
                    (size, call[1])
                thoughts = written.split("[CALL]")[0].split("\n")[:-1]
                own, before = thoughts[-1] if thoughts else own, call[2]
            assert stream.endswith(f"[ANS]{x.evaluate()}[EOS]")


def check_policy(task, x, policy) -> None:
    stream = V.decode(expected_stream(task.script(x)))
    calls = list(SEGMENT.finditer(stream))
    defs, cone, todo = {g.target: g for g in x.gates}, set(), [x.output]
    while todo:  # the gates the output depends on: a few of a graph's gates may feed nothing
        node = todo.pop()
        if node in defs and node not in cone:
            cone.add(node)
            todo += [v for v, _ in defs[node].operands]
    assert len(calls) >= len(cone)
    assert stream.startswith(f"[CALL]find {x.output}[/CALL]")
    for call, after in zip(calls, calls[1:] + [None]):
        written = stream[call.end():after.start() + len(f"[CALL]find {after[1]}[/CALL]") if after else len(stream)]
        assert written == policy(call[1], call[2]), (len(x.gates), call[1])
    assert stream.endswith(f"[ANS]{x.evaluate()}[EOS]")


@pytest.mark.parametrize("trajectory,policy", [("local", next_text), ("linked", next_text_linked)])
@pytest.mark.parametrize("labels,sizes", [(10_000, [1, 2, 5, 20, 100, 1000]), (40, [1, 3, 10, 37])])
def test_local_trajectory_follows_from_the_latest_result_alone(trajectory, policy, labels, sizes, rng):
    task = get_task("logical_graph", labels=labels, trajectory=trajectory)
    for size in sizes:
        check_policy(task, task.sample(rng, size), policy)


def test_shared_training_graphs_meet_variables_twice_like_large_ones(rng):
    """The option `shared` (for training graphs) makes a 3-gate graph reach an already-known variable
    (its "has" line right after the result) several times as often; the format is the same."""
    known = {}
    for shared in (0.0, 0.7):
        task = get_task("logical_graph", labels=100, trajectory="linked", shared=shared)
        graphs = [task.sample(rng, 3) for _ in range(300)]
        for x in graphs[:30]:
            check_policy(task, x, next_text_linked)
        streams = [V.decode(expected_stream(task.script(x))) for x in graphs]
        known[shared] = sum(len(re.findall(r"\[/RESULT\]v\d+ has", s)) for s in streams)
    assert known[0.7] >= 4 * max(known[0.0], 1)


def test_carried_trajectory_is_the_original_format(rng):
    """The first format stays selectable (the earlier GPU runs used it): "x from node" lines, no
    "needs" / "has" lines."""
    x = get_task("logical_graph").sample(rng, 8)
    carried = V.decode(expected_stream(get_task("logical_graph", trajectory="carried").script(x)))
    local = V.decode(expected_stream(get_task("logical_graph", trajectory="local").script(x)))
    assert " from " in carried and " needs " not in carried and " has " not in carried
    assert " needs " in local and " from " not in local


def next_text_answered(query: str, result: str) -> str:
    """What the "answered" trajectory writes after a search up to its next call (included), from that
    search's answer alone (the call copies the line written just before it)."""
    lines = result.replace("[BOS]", "").split("\n")
    if query.startswith("needs "):  # the asker's latest "needs" line, then the value line just written
        value = lines[-1].split()[2]
        if len(lines) == 1:  # nobody needs the output
            return f"[ANS]{value}[EOS]"
        node, _, literal, *rest = lines[-2].split()
        value = str((value == "True") != literal.endswith("'"))
        has = " ".join([node, "has", literal, lines[-1].split()[2], value, *rest[:1]]) + "\n"
        if rest and (rest[0] == "and") == (value == "True"):
            return has + f"[CALL]find {node} rest[/CALL]"
        return has + f"{node} = {value} needs {node}\n[CALL]find needs {node}[/CALL]"
    if query.endswith(" rest"):  # the node's rest line: its next literal
        node, _, literal = lines[-1].split()
        return f"{node} needs {literal}\n[CALL]find {literal.rstrip(chr(39))} =[/CALL]"
    word = query.removesuffix(" =")
    rhs = lines[-1].split(" = ")[1]
    if rhs.split()[0] in ("True", "False"):  # an input, or a value line: valued
        return f"{word} = {rhs.split()[0]} needs {word}\n[CALL]find needs {word}[/CALL]"
    first, *more = re.sub(r"not (\w+)", r"\1'", rhs).split()
    lines = f"{word} needs {first} {more[0]}\n{word} rest {more[1]}" if more else f"{word} needs {first}"
    return f"{lines}\n[CALL]find {first.rstrip(chr(39))} =[/CALL]"


def test_answered_trajectory_follows_from_the_latest_answer_alone(rng):
    """Every line of the "answered" trajectory follows from the latest search's answer alone, so that
    nothing is carried across an answer, at any graph size and with labels that prefix others."""
    segment = re.compile(r"\[CALL\]find ([^[]*)\[/CALL\]\[RESULT\](.*?)\[/RESULT\]", re.S)
    for labels, sizes in ((10_000, [1, 2, 5, 20, 100, 1000]), (40, [1, 3, 10, 37])):
        for shared in (0.0, 0.7):
            task = get_task("logical_graph", labels=labels, trajectory="answered", shared=shared)
            for size in sizes:
                x = task.sample(rng, size)
                stream = V.decode(expected_stream(task.script(x)))
                calls = list(segment.finditer(stream))
                assert stream.startswith(f"[CALL]find {x.output} =[/CALL]")
                for call, after in zip(calls, calls[1:] + [None]):
                    end = after.start() + len(f"[CALL]find {after[1]}[/CALL]") if after else len(stream)
                    assert stream[call.end():end] == next_text_answered(call[1], call[2]), (size, call[1])
                assert stream.endswith(f"[ANS]{x.evaluate()}[EOS]")
