"""Conformance suite run over every tool (C++ and a Python subclass), then each tool's own semantics."""
import numpy as np
import pytest

from ssm_tools.tools import Calculator, CodeSandbox, PointerMemory, SearchMemory, TapeMemory, Tool
from ssm_tools.vocab import (ANS, BLANK, ERR, MAX_POINTERS, NEWLINE, POINTER_OPS, VOCAB_SIZE, decode, encode,
                             is_pointer_cmd, pointer_cmd)

READ, LEFT, RIGHT, WRITE = (POINTER_OPS.index(op) for op in POINTER_OPS)


class PyPointerMemory(Tool):
    """PointerMemory written in Python: the Python-subclass case of the suite, and a reference for the
    C++ pointer memories' read/left/right."""

    def __init__(self, num_pointers=2, max_cells=1 << 20):
        Tool.__init__(self)
        self.num_pointers, self.max_cells = num_pointers, max_cells
        self.reset(0)

    def name(self):
        return "py_pointer_memory"

    def reset(self, seed=0):
        self.cells, self.pos = [], [0] * self.num_pointers

    def observe(self, token):
        if len(self.cells) < self.max_cells:
            self.cells.append(token)

    def _decode(self, command):
        if len(command) != 1 or not is_pointer_cmd(command[0]):
            return None
        pointer, op = divmod(command[0] - pointer_cmd(0, "read"), len(POINTER_OPS))
        return (pointer, op) if pointer < self.num_pointers and op != WRITE else None

    def accepts(self, command):
        return self._decode(command) is not None

    def call(self, command):
        decoded = self._decode(command)
        if decoded is None:
            return [ERR]
        p, op = decoded
        if op == READ:
            return [self.cells[self.pos[p]] if self.pos[p] < len(self.cells) else BLANK]
        step = -1 if op == LEFT else 1
        if not 0 <= self.pos[p] + step <= len(self.cells):
            return [ERR]
        self.pos[p] += step
        return []

    def dump(self):
        return f"py_pointer_memory: {len(self.cells)} cells, pointers at {self.pos}"


def _sandbox():
    box = CodeSandbox()
    box.load({"main.py": "print(1)\n"})
    return box


# name -> (factory, largest answer it may give)
CASES = {
    "pointer_memory": (lambda: PointerMemory(num_pointers=2, max_cells=64), 1),
    "tape_memory": (lambda: TapeMemory(num_pointers=2, max_cells=64), 1),
    "search_memory": (lambda: SearchMemory(max_lines=16, max_response_tokens=64), 65),
    "calculator": (lambda: Calculator(max_digits=40), 64),
    "code_sandbox": (_sandbox, 4096),
    "py_pointer_memory": (lambda: PyPointerMemory(num_pointers=2, max_cells=64), 1),
}
TEXT_WORDS = ["find", "add", "ls", "cat", "edit", "run", "frob", ""]


def random_memory_token(rng):
    return int(rng.choice([NEWLINE, ANS, *encode("0123456789+=abv ")]))


def random_command(rng):
    """Well-formed and malformed commands alike, as a model could produce them."""
    kind = rng.integers(5)
    if kind == 0:
        return [pointer_cmd(int(rng.integers(MAX_POINTERS)), POINTER_OPS[int(rng.integers(3))])]
    if kind == 1:
        return [pointer_cmd(int(rng.integers(MAX_POINTERS)), "write"), int(rng.integers(-2, VOCAB_SIZE + 2))]
    if kind == 2:
        word = TEXT_WORDS[int(rng.integers(len(TEXT_WORDS)))]
        args = " ".join(str(rng.integers(10 ** int(rng.integers(1, 12)))) for _ in range(rng.integers(0, 4)))
        return encode(f"{word} {args}".strip() if word != "run" or rng.random() < 0.1 else "runs")
    if kind == 3:
        return [int(t) for t in rng.integers(-3, VOCAB_SIZE + 3, size=int(rng.integers(0, 6)))]
    return []


def random_ops(rng, n):
    return [("observe", random_memory_token(rng)) if rng.random() < 0.4 else ("call", random_command(rng))
            for _ in range(n)]


def run_ops(tool, ops):
    return [tool.call(arg) if kind == "call" else tool.observe(arg) for kind, arg in ops]


@pytest.fixture(params=sorted(CASES))
def case(request):
    return CASES[request.param]


def test_reset_is_deterministic(case, rng):
    make, _ = case
    ops = random_ops(rng, 300)
    tool = make()
    tool.reset(7)
    first, first_dump = run_ops(tool, ops), tool.dump()
    tool.reset(7)
    assert run_ops(tool, ops) == first and tool.dump() == first_dump
    fresh = make()
    fresh.reset(7)
    assert run_ops(fresh, ops) == first and fresh.dump() == first_dump


def test_answers_are_bounded_tokens_and_rejections_are_errors(case, rng):
    make, max_answer = case
    tool = make()
    tool.reset(0)
    for kind, arg in random_ops(rng, 600):
        if kind == "observe":
            tool.observe(arg)
            continue
        accepted = tool.accepts(arg)
        answer = tool.call(arg)
        assert isinstance(answer, list) and len(answer) <= max_answer, (arg, answer)
        assert all(0 <= t < VOCAB_SIZE for t in answer), (arg, answer)
        if not accepted:
            assert answer[:1] == [ERR], (arg, answer)


def test_unknown_and_overlong_commands_are_answered(case, rng):
    make, max_answer = case
    tool = make()
    tool.reset(0)
    for t in encode("a b\nv1 = 2\n"):
        tool.observe(t)
    unknown = encode("frobnicate x")
    assert not tool.accepts(unknown) and tool.call(unknown)[:1] == [ERR]
    for word in TEXT_WORDS + ["p"]:
        huge = encode(word + " " + "".join(map(str, rng.integers(10, size=20000))))
        answer = tool.call(huge)
        assert len(answer) <= max_answer and all(0 <= t < VOCAB_SIZE for t in answer)


def test_dump_is_readable_and_bounded(case, rng):
    make, _ = case
    tool = make()
    tool.reset(0)
    run_ops(tool, random_ops(rng, 2000))
    text = tool.dump()
    assert isinstance(text, str) and text.startswith(tool.name()) and len(text) < 4096
    assert all(line.isprintable() for line in text.split("\n"))


# ---------------------------------------------------------------- pointer memories

POINTER_MEMORIES = [PointerMemory, TapeMemory, PyPointerMemory]


@pytest.mark.parametrize("cls", POINTER_MEMORIES)
def test_pointer_edges(cls):
    mem = cls(num_pointers=2, max_cells=8)
    read, left, right = ([pointer_cmd(0, op)] for op in ("read", "left", "right"))
    assert mem.call(read) == [BLANK]  # empty memory: the pointer is one past the end
    assert mem.call(left) == [ERR] and mem.call(right) == [ERR]
    prompt = encode("12+3")
    for t in prompt:
        mem.observe(t)
    assert mem.call(read) == prompt[:1]
    assert [mem.call(right) for _ in range(4)] == [[]] * 4
    assert mem.call(read) == [BLANK] and mem.call(right) == [ERR]
    assert mem.call(left) == [] and mem.call(read) == prompt[3:4]
    assert mem.call([pointer_cmd(1, "read")]) == prompt[:1]  # pointers move independently
    assert not mem.accepts([pointer_cmd(2, "read")]) and mem.call([pointer_cmd(2, "read")]) == [ERR]


@pytest.mark.parametrize("cls", [PointerMemory, TapeMemory])
def test_pointer_memory_matches_python_reference(cls, rng):
    mem, ref = cls(num_pointers=3, max_cells=50), PyPointerMemory(num_pointers=3, max_cells=50)
    for _ in range(3000):
        if rng.random() < 0.3:
            t = random_memory_token(rng)
            mem.observe(t), ref.observe(t)
        else:
            command = [pointer_cmd(int(rng.integers(MAX_POINTERS)), POINTER_OPS[int(rng.integers(3))])]
            assert mem.call(command) == ref.call(command), command
    assert [mem.position(p) for p in range(3)] == ref.pos and mem.cells == ref.cells


@pytest.mark.parametrize("cls", POINTER_MEMORIES)
def test_pointer_memory_keeps_at_most_max_cells(cls):
    mem = cls(num_pointers=1, max_cells=5)
    for t in encode("abcdefgh"):
        mem.observe(t)
    for _ in range(5):
        assert mem.call([pointer_cmd(0, "right")]) == []
    assert mem.call([pointer_cmd(0, "right")]) == [ERR]
    if cls is not PyPointerMemory:
        assert mem.cells == encode("abcde") and "dropped" in mem.dump()


def test_pointer_memory_has_no_write():
    mem = PointerMemory()
    command = [pointer_cmd(0, "write"), encode("x")[0]]
    assert not mem.accepts(command) and mem.call(command) == [ERR]


def test_tape_write_replaces_extends_and_rejects():
    tape = TapeMemory(num_pointers=1, max_cells=3)
    write = pointer_cmd(0, "write")
    for t in encode("ab"):
        tape.observe(t)
    assert tape.call([write, encode("z")[0]]) == [] and tape.cells == encode("zb")
    tape.call([pointer_cmd(0, "right")]), tape.call([pointer_cmd(0, "right")])
    assert tape.call([write, BLANK]) == [] and tape.cells == encode("zb") + [BLANK]  # extends by one
    tape.call([pointer_cmd(0, "right")])
    assert tape.call([write, encode("q")[0]]) == [ERR]  # full
    assert tape.call([write, ANS]) == [ERR] and tape.call([write]) == [ERR]  # bad symbol, no symbol
    assert tape.cells == encode("zb") + [BLANK]


@pytest.mark.parametrize("kwargs", [{"num_pointers": 0}, {"num_pointers": MAX_POINTERS + 1}, {"max_cells": 0}])
@pytest.mark.parametrize("cls", [PointerMemory, TapeMemory])
def test_pointer_memory_rejects_bad_configuration(cls, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        cls(**kwargs)


# ---------------------------------------------------------------- search memory

def observe_text(tool, text):
    for t in encode(text):
        tool.observe(t)


def test_find_returns_whole_word_lines():
    mem = SearchMemory()
    observe_text(mem, "v630 = v12 and v7\nv12 = not v630\nv6300 = v1\nx = 1\nlog v630")
    assert decode(mem.call(encode("find v630"))) == "v630 = v12 and v7\nv12 = not v630\nlog v630"
    assert decode(mem.call(encode("find v6"))) == ""  # part of a word only
    assert decode(mem.call(encode("find = v1"))) == "v6300 = v1"
    assert mem.call(encode("find")) [:1] == [ERR] and mem.call(encode("find ")) [:1] == [ERR]


def test_find_answer_is_bounded_by_whole_lines():
    mem = SearchMemory(max_lines=100, max_response_tokens=20)
    observe_text(mem, "k 1234567\nk 2345678\nk 3\n")
    assert decode(mem.call(encode("find k"))) == "k 1234567\nk 2345678"  # 19 tokens; adding "\nk 3" exceeds 20


def test_search_memory_keeps_at_most_max_lines_and_line_length():
    mem = SearchMemory(max_lines=2, max_response_tokens=16)
    observe_text(mem, "a\nb\nc\n" + "d" * 40)
    assert [decode(line) for line in mem.lines] == ["a", "b"] and "dropped" in mem.dump()
    mem = SearchMemory(max_lines=4, max_response_tokens=16)
    observe_text(mem, "w " + "e" * 40)
    assert len(mem.lines[0]) == 16 and decode(mem.call(encode("find w"))) == "w " + "e" * 14


@pytest.mark.parametrize("kwargs", [{"max_lines": 0}, {"max_response_tokens": 1}])
def test_search_memory_rejects_bad_configuration(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SearchMemory(**kwargs)


# ---------------------------------------------------------------- calculator

def test_calculator_adds_long_numbers(rng):
    calc = Calculator()
    for _ in range(50):
        a, b = (int("".join(map(str, rng.integers(10, size=int(rng.integers(1, 300)))))) for _ in range(2))
        assert decode(calc.call(encode(f"add {a} {b}"))) == str(a + b)
    assert decode(calc.call(encode("add 0007 0995"))) == "1002"


@pytest.mark.parametrize("call", ["add 1", "add -1 2", "add 1 2 3", "add a 2", "add 1  2", "add", "add 1 2 "])
def test_calculator_rejects_malformed_calls(call):
    answer = Calculator().call(encode(call))
    assert answer[0] == ERR and "usage" in decode(answer)


def test_calculator_rejects_too_many_digits():
    calc = Calculator(max_digits=10)
    assert decode(calc.call(encode("add 1234567890 1"))) == "1234567891"
    assert calc.call(encode("add 12345678901 1"))[0] == ERR
    with pytest.raises(ValueError, match="max_digits"):
        Calculator(max_digits=0)


def test_pointer_dump_shows_cells_around_each_pointer():
    mem = PointerMemory(num_pointers=2)
    observe_text(mem, "ab\ncd" + "x" * 30)
    mem.call([pointer_cmd(1, "right")]), mem.call([pointer_cmd(1, "right")])
    lines = mem.dump().split("\n")
    assert lines[0] == "pointer_memory: 35 cells"
    assert lines[1] == "  p1 @ 0: <a>b\\ncdxxxx..." and lines[2] == "  p2 @ 2: ab<\\n>cdxxxxxx..."  # 8 cells each side
