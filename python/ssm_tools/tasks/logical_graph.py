"""Logical graph with the search memory: evaluate a random boolean circuit written as Python code.

A DAG of n gates over 3 inputs; each gate is the AND or OR of one or two earlier variables, each
possibly negated ("v88 = v12 and not v630", "v5 = not v88"); the last gate is the output. Labels
are distinct random "v<0..9999>" (option `labels`: "v<0..labels-1>"; fewer labels mean shorter ones
to copy, for tiny models, see results/tasks_notes.md). Prompt: the code, inputs first, one assignment per line, then
"print(<output>)".

Interactive policy: depth-first search from the output with `find`, the memory as the stack. Two
trajectory formats (option `trajectory`):

"local": every label or value the model writes is copied from the latest `find` result or from
its own line just before the call, so nothing is carried across a tool result. Visiting node N, the
latest result R is `find N` (N's definition first, then its uses and every thought line holding N):
  * while an operand of N has no "N has" line yet: the next operand's literal L ("x" or "not x",
    copied from the definition) goes into the thought "N needs L", then [CALL] find x [/CALL]. If
    that result shows x known (its own line "x = True/False", an input, or "x is True/False",
    logged), the thought "N has L <value of L>" logs it (N and L from the result's last line,
    "N needs L"; the value is x's, negated if L is "not x") and [CALL] find N [/CALL] returns to N.
    Otherwise x is visited: its "N needs L" line is the way back.
  * once every operand has a has-line (the last line's operand is the definition's last), the
    thought "N is <value>" (the definition's and / or over the has-lines' values). The parent P is
    in R's line "P needs L" (the only one: N was not known before); then "P has L <value of L>" and
    [CALL] find P [/CALL]. The output has no parent (R holds "print(N)"): [ANS] <value> [EOS].
"linked": the local trajectory with two changes. A node's "needs" and "is" lines end with its way
back, " ^" + the parent's number (its label without the "v": no `find` matches it), "^!" when the
parent reads "not node" ("v76 needs not v79 ^97", "v76 is True ^97"; the output's lines have none):
a node's first line writes the link from the result's last line ("P needs L"), later ones copy the
latest link in the result, and after "N is V ^P" the line "vP has L V" reads that line alone, where
"local" looks up the line "P needs L" inside the result. And an input is visited like a gate of no
operand the first time it is needed ("v79 is False ^!76", its value from its line "v79 = False"),
so that a variable is known exactly when the result holds its "is" line: small training graphs
reach a gate a second time almost never, but an input often.
"phrase": the linked trajectory's lines and links, with every search a phrase (`find` matches any
text, like grep, with no word character right before or after it), so that each answer is at most two
short lines whatever the graph's size. A node's "needs" line holds what is left of its definition
("v76 needs not v79 and not v86 ^97"), evaluated left to right with short circuit (an "and" whose
literal is False, an "or" whose literal is True, is valued at once; the operands after it are not
searched), and its value line is "N = V ^P". With "N needs L ... ^P" its latest line, the model asks
`find x =` (x: L's variable): the answer is x's definition, then x's value line if it has one. Its
last line a value (an input, or x valued): "N has L <value of L>", then `find N needs` answers N's
"needs" lines, the latest last: N is valued ("N = V ^P", V the has-line's) or needs its next literal.
Otherwise x is visited: "x needs <x's right side> ^[!]N". After "x = V ^P": "vP has L <value of L>"
(L: x, or "not x" for "^!") and `find vP needs` again.
"phrase_back": the phrase trajectory with links of one bit (" ^" or " ^!", no number) and no
has-lines: once the value of N's literal L is known (`find x =` answered x's value line, or the model
wrote "x = V ^[!]"), `find needs L` answers the lines where L was a node's first pending literal, the
asking node's latest needs line last; N is valued or needs its next literal from that line and the
value, carried across the answer. No label is copied from before a search, only bits (a value, "!").
"answered": every model line follows from the latest search's answer alone (a call copies the line
written just before it): nothing is copied or carried across an answer, the values are computed from
neighbouring words. A literal is written "x", or "x'" for "not x" (`find needs x` matches both). At
node N, its latest line "N needs L [op M]", the model asks `find x =` (x: L's variable): x's
definition, then x's value lines if any. If the answer's last line holds a value ("x = True": an
input, or an earlier "x = V needs x"), it writes "x = V needs x" and asks `find needs x`, whose
answer ends with the asker's needs line and that value line; otherwise x is visited: "x needs L
[op]" (x's first literal, and its operator if it has two), then "x rest M" (the second). After
`find needs x`: one line (the output's: nobody needs it): [ANS] V; else the has-line "N has L V W
[op]" (L as N wrote it, V: x's value, W: L's, the operator if a literal is left); N valued (its
last literal, or W decides the operator): "N = W needs N" and `find needs N`; otherwise `find N
rest` answers "N rest M", and the model writes "N needs M".
"carried" (the first format; the current node's definition and label come from results further
back than the latest): the current node's definition is the last `find` result that holds it.
  * for each operand x of the current node in order: [CALL] find x [/CALL]; x is known if the result
    holds "x = True/False" (an input) or "x is True/False" (a logged value);
  * at the first unknown operand, the thought line "x from <node>" logs the way back and x (whose
    definition that same result holds) becomes the current node;
  * once all operands are known the thought line "<node> is <value>" logs its value; then
    [CALL] find <node> [/CALL] shows "<node> from <parent>" and [CALL] find <parent> [/CALL] its
    definition; the parent is current again. The output has no parent: [ANS] <value> [EOS].
Labels are whole words ("v" and digits; `find` matches whole words), distinct from the format's
words (needs, has, is, not, and, or, True, False, print).
The search answers (all lines holding the word, joined by '\n') are forced tokens the oracle
predicts; the tests check that the real SearchMemory answers exactly that.
Modes: interactive; cot (the same with every `find` answer predicted as thought lines, no tool);
single_turn (one turn of tool use, then none: the `find` calls before the first thought line are
answered by the search memory as in interactive (local: the output's own `find`; carried: its
operands' up to "x from <output>"); from there on the trajectory is the cot one, every later
definition and logged value recalled by the model itself).
Sizes: n gates exactly (training: 1..max_size).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial

import numpy as np

from .. import vocab as V
from ..env import ToolSpec
from .base import Task, cot_script, forced, text

NUM_INPUTS = 3
LABELS = 10_000
MAX_RESPONSE_TOKENS = 1 << 14
WORD = re.compile(r"\w+", re.ASCII)


@dataclass(frozen=True)
class Gate:
    target: str
    operands: tuple[tuple[str, bool], ...]  # (variable, negated), one or two
    op: str  # "and" / "or"

    def line(self) -> str:
        terms = [("not " if neg else "") + v for v, neg in self.operands]
        return f"{self.target} = " + f" {self.op} ".join(terms)

    def value(self, values: dict[str, bool]) -> bool:
        terms = [values[v] != neg for v, neg in self.operands]
        return all(terms) if self.op == "and" else any(terms)


@dataclass(frozen=True)
class Circuit:
    inputs: tuple[tuple[str, bool], ...]
    gates: tuple[Gate, ...]

    @property
    def output(self) -> str:
        return self.gates[-1].target

    def code(self) -> str:
        lines = [f"{v} = {b}" for v, b in self.inputs] + [g.line() for g in self.gates]
        return "\n".join(lines) + f"\nprint({self.output})\n"

    def evaluate(self) -> bool:
        values = dict(self.inputs)
        for g in self.gates:
            values[g.target] = g.value(values)
        return values[self.output]


def random_circuit(rng: np.random.Generator, n: int, label_space: int = LABELS, shared: float = 0.0) -> Circuit:
    labels = [f"v{i}" for i in rng.choice(label_space, NUM_INPUTS + n, replace=False).tolist()]
    inputs = tuple((v, bool(b)) for v, b in zip(labels, rng.integers(0, 2, NUM_INPUTS).tolist()))
    gates = []
    unused = list(range(NUM_INPUTS))  # variables no gate reads yet
    for i in range(n):
        earlier = NUM_INPUTS + i
        # Operands come first from the unused variables, so (nearly) every gate feeds the output and
        # the search has the whole circuit to walk, not a small cone. With `shared`, a gate is that
        # often the previous gate and a variable an earlier gate reads already: a variable the
        # search meets twice, as it does often in large circuits and almost never in small ones.
        reuse = i > 0 and shared > 0 and rng.random() < shared
        picks = []
        for _ in range(2 if reuse else int(rng.integers(1, 3))):
            read = [j for j in range(earlier) if j not in unused and j not in picks]
            pool = ([earlier - 1] if not picks else read) if reuse else unused or [
                j for j in range(earlier) if j not in picks]
            if not pool:
                break
            j = pool[int(rng.integers(len(pool)))]
            picks.append(j)
            if j in unused:
                unused.remove(j)
        unused.append(earlier)
        operands = tuple((labels[j], bool(rng.integers(0, 2))) for j in picks)
        gates.append(Gate(labels[earlier], operands, "and" if rng.integers(0, 2) else "or"))
    return Circuit(inputs, tuple(gates))


class _Search:
    """The oracle's view of the search memory: its lines, indexed by word, and `find` as a script.
    Labels are whole words ([A-Za-z0-9_]+), so a word index answers like the tool's whole-word scan."""

    def __init__(self, code: str):
        self.lines: list[str] = []
        self.index: dict[str, list[int]] = {}
        for line in code.split("\n")[:-1]:
            self.add(line)
        self.script: list[int] = []

    def add(self, line: str) -> None:
        for word in set(WORD.findall(line)):
            self.index.setdefault(word, []).append(len(self.lines))
        self.lines.append(line)

    def find(self, word: str) -> bool:
        """The script of `find word`; `word` may be a phrase ("v7 is"), matched like the tool: its
        text with no word character right before or after it. Whether any line matched."""
        hits = self.index.get(WORD.match(word)[0], [])
        if " " in word:
            phrase = re.compile(r"(?<!\w)" + re.escape(word) + (r"(?!\w)" if word[-1].isalnum() else ""), re.ASCII)
            hits = [i for i in hits if phrase.search(self.lines[i])]
        # The first line starts with the prompt's [BOS], which the search memory keeps.
        answer = [t for i in hits for t in ([V.NEWLINE] if i != hits[0] else []) + ([V.BOS] if i == 0 else [])
                  + text(self.lines[i])]
        self.script += [V.CALL, *text(f"find {word}"), V.CALL_END, *forced([V.RESULT, *answer, V.RESULT_END])]
        return bool(hits)

    def write(self, line: str) -> None:
        self.add(line)
        self.script += text(line + "\n")


def carried_script(x: Circuit) -> list[int]:
    """The "carried" trajectory (module docstring): the current node is carried across results."""
    defs = {g.target: g for g in x.gates}
    values = dict(x.inputs)
    parent: dict[str, str] = {}
    search = _Search(x.code())
    node = x.output
    search.find(node)
    while True:
        unknown = None
        for v, _ in defs[node].operands:
            search.find(v)
            if v not in values:
                unknown = v
                break
        if unknown is not None:
            search.write(f"{unknown} from {node}")
            parent[unknown], node = node, unknown
            continue
        values[node] = defs[node].value(values)
        search.write(f"{node} is {values[node]}")
        if node == x.output:
            return search.script + [V.ANS, *text(str(values[node])), V.EOS]
        search.find(node)
        node = parent[node]
        search.find(node)


def local_script(x: Circuit, linked: bool = False) -> list[int]:
    """The "local" trajectory (module docstring): every line copies from the latest result or from
    the model's own line before it. With `linked`, the "linked" one: a node's needs / is lines end
    with its way back, and inputs are visited like gates of no operand (known once logged)."""
    defs = {g.target: g for g in x.gates}
    inputs = dict(x.inputs)
    values = {} if linked else dict(inputs)
    back = {x.output: ""}  # node -> the link its needs / is lines end with ("" in local)
    parent: dict[str, tuple[str, str, int]] = {}  # node -> (its parent, the literal there, its place there)
    search = _Search(x.code())
    node, k = x.output, 0  # the current node and how many of its operands are known
    search.find(node)
    while True:
        operands = defs[node].operands if node in defs else ()
        if k < len(operands):
            v, negated = operands[k]
            literal = ("not " if negated else "") + v
            search.write(f"{node} needs {literal}{back[node]}")
            search.find(v)
            if v in values:
                search.write(f"{node} has {literal} {values[v] != negated}")
                search.find(node)
                k += 1
            else:
                # The parent's number without its letter: no `find` of a label matches the link.
                back[v] = f" ^{'!' if negated else ''}{node[1:]}" if linked else ""
                parent[v] = (node, literal, k)
                node, k = v, 0
            continue
        values[node] = defs[node].value(values) if node in defs else inputs[node]
        search.write(f"{node} is {values[node]}{back[node]}")
        if node == x.output:
            return search.script + [V.ANS, *text(str(values[node])), V.EOS]
        up, literal, place = parent[node]
        search.write(f"{up} has {literal} {values[node] != literal.startswith('not ')}")
        search.find(up)
        node, k = up, place + 1


def phrase_script(x: Circuit, by_search: bool = False) -> list[int]:
    """The "phrase" trajectory (module docstring): every search a phrase whose answer is at most two
    short lines, the gates valued left to right with short circuit. With `by_search`, "phrase_back":
    a link is "^" or "^!" alone, no has-lines, and once a literal's value is known `find needs x` (or
    `needs not x`) answers the asking node's latest "needs" line last."""
    defs = {g.target: g for g in x.gates}
    values: dict[str, bool] = dict(x.inputs)
    back = {x.output: ""}
    rest: dict[str, list[tuple[str, bool]]] = {}  # gate -> its operands not valued yet
    parent: dict[str, str] = {}
    search = _Search(x.code())

    def literal(v: str, negated: bool) -> str:
        return ("not " if negated else "") + v

    def ask(node: str) -> None:
        search.write(f"{node} needs " + f" {defs[node].op} ".join(literal(*o) for o in rest[node]) + back[node])

    node = x.output
    search.find(f"{node} =")
    rest[node] = list(defs[node].operands)
    ask(node)
    while True:
        v, negated = rest[node][0]
        search.find(f"{v} =")  # the definition, then the value line once there is one
        if v not in values:
            # The parent's number without its letter: no search of a label's phrases matches it.
            back[v] = f" ^{'!' if negated else ''}{'' if by_search else node[1:]}"
            parent[v], node = node, v
            rest[node] = list(defs[node].operands)
            ask(node)
            continue
        value = values[v] != negated
        while True:  # the literal's value known, back at the node: it is valued, or needs its next literal
            if by_search:
                search.find(f"needs {literal(v, negated)}")
            else:
                search.write(f"{node} has {literal(v, negated)} {value}")
                search.find(f"{node} needs")
            rest[node].pop(0)
            if rest[node] and value != (defs[node].op == "or"):
                ask(node)
                break
            values[node] = value
            search.write(f"{node} = {value}{back[node]}")
            if node == x.output:
                return search.script + [V.ANS, *text(str(value)), V.EOS]
            (v, negated), node = rest[parent[node]][0], parent[node]
            value = values[v] != negated


def answered_script(x: Circuit) -> list[int]:
    """The "answered" trajectory (module docstring): every model line follows from the latest search's
    answer alone, every call from the model's own line just before it."""
    defs = {g.target: g for g in x.gates}
    values: dict[str, bool] = dict(x.inputs)
    rest: dict[str, list[tuple[str, bool]]] = {}  # gate -> its operands not valued yet
    parent: dict[str, str] = {}
    search = _Search(x.code())

    def ask(node: str) -> None:
        """Its first literal left ("x'" for "not x": `find needs x` matches both) and the operator if
        another is left; that one in a line of its own, so that no copy of it follows "needs"."""
        literals = [v + "'" * neg for v, neg in rest[node]]
        search.write(f"{node} needs {literals[0]}" + (f" {defs[node].op}" if len(literals) > 1 else ""))
        if len(literals) > 1:
            search.write(f"{node} rest {literals[1]}")

    node = x.output
    search.find(f"{node} =")
    rest[node] = list(defs[node].operands)
    ask(node)
    while True:
        v = rest[node][0][0]
        search.find(f"{v} =")  # the definition, then the value lines once there are some
        if v not in values:
            parent[v], node = node, v
            rest[node] = list(defs[node].operands)
            ask(node)
            continue
        while True:  # v valued: its value line, then the search that answers it after its asker's line
            search.write(f"{v} = {values[v]} needs {v}")
            search.find(f"needs {v}")
            if v == x.output:
                return search.script + [V.ANS, *text(str(values[v])), V.EOS]
            # The literal as the asker wrote it, x's value, the literal's value, the operator if a
            # literal is left: each value is read from the words just before it, and whether the
            # node is valued from the last two. Its next literal comes from its rest line, searched.
            negated = rest[node].pop(0)[1]
            value = values[v] != negated
            op = f" {defs[node].op}" if rest[node] else ""
            search.write(f"{node} has {v}{chr(39) * negated} {values[v]} {value}{op}")
            if rest[node] and value != (defs[node].op == "or"):
                search.find(f"{node} rest")
                ask(node)
                break
            values[node], v = value, node
            node = parent.get(node, node)


TRAJECTORIES = {"local": local_script, "carried": carried_script, "linked": partial(local_script, linked=True),
                "phrase": phrase_script, "phrase_back": partial(phrase_script, by_search=True),
                "answered": answered_script}


class LogicalGraph(Task):
    name = "logical_graph"
    modes = ("interactive", "cot", "single_turn")
    size_name = "gates"

    def __init__(self, mode: str = "interactive", labels: int = LABELS, trajectory: str = "local",
                 shared: float = 0.0):
        super().__init__(mode)
        if isinstance(labels, bool) or not isinstance(labels, int) or labels <= NUM_INPUTS:
            raise ValueError(f"logical_graph: labels must be an integer > {NUM_INPUTS}, got {labels!r}")
        if trajectory not in TRAJECTORIES:
            raise ValueError(f"logical_graph: trajectory must be one of {sorted(TRAJECTORIES)}, got {trajectory!r}")
        if isinstance(shared, bool) or not isinstance(shared, (int, float)) or not 0 <= shared <= 1:
            raise ValueError(f"logical_graph: shared must be a number in [0, 1], got {shared!r}")
        self.labels = labels
        self.trajectory = trajectory
        self.shared = float(shared)

    def __repr__(self) -> str:
        return (f"LogicalGraph(mode={self.mode!r}, labels={self.labels}, trajectory={self.trajectory!r}, "
                f"shared={self.shared})")

    def sample(self, rng: np.random.Generator, size: int) -> Circuit:
        n = self.check_size(size)
        if n > self.labels - NUM_INPUTS:
            raise ValueError(f"logical_graph: size (gates) must be <= {self.labels - NUM_INPUTS} with {self.labels} "
                             f"labels, got {n}")
        return random_circuit(rng, n, self.labels, self.shared)

    def sample_train(self, rng: np.random.Generator, max_size: int) -> Circuit:
        return self.sample(rng, int(rng.integers(1, self.check_size(max_size, "max_size") + 1)))

    def prompt(self, x: Circuit) -> list[int]:
        return [V.BOS, *text(x.code())]

    def answer(self, x: Circuit) -> list[int]:
        return text(str(x.evaluate()))

    def tools(self) -> list[ToolSpec]:
        if self.mode == "cot":
            return []
        return [ToolSpec("search_memory", max_response_tokens=MAX_RESPONSE_TOKENS)]

    def _script(self, x: Circuit, mode: str) -> list[int]:
        script = TRAJECTORIES[self.trajectory](x)
        return cot_script(script, self.answer(x), keep_first_turn=True) if mode == "single_turn" else script

    def max_steps(self, size: int) -> int:
        # Measured: about 500 tokens per gate at 1,000 gates, growing with log n (a variable's
        # `find` answer lists its uses); this bound leaves a factor of 2-3.
        n = self.check_size(size)
        return 2000 + int(n * (800 + 100 * np.log(n + NUM_INPUTS)))
