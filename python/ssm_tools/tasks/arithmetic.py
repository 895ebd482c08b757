"""What addition and multiplication share: operands, prompts, and the pointer walks around the
digit loop.

Prompt: [BOS] a <op> b = (digits as tokens). Memory layout of the thoughts: results are written
least significant digit first as (carry, digit) pairs -- the carry first so that reading the pairs
back from the right, two cells at a time, lands on the cell before the first pair (a non-digit:
'=' or '#') and stops there.

Every decision of the policies is local: it depends on the last few tokens (mostly the last
observation), never on a count or a phase remembered from far back. Pointer roles:
  p2 ("B") walks first to one past the end ([BLANK]) and back two cells: the last digit of b;
  p1 ("A") walks to the operator and back one cell: the last digit of a. p2 does the read-back walk
  to [ANS] later: that walk passes '=' like its first one and, like it, keeps walking there, while
  the first walk alone meets [BLANK] -- so no observation means two different things.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from .. import vocab as V
from ..env import ToolSpec
from .base import CHAR, CMD, DIGITS, FORCED, Task, chars, forced, number, packed_walk, text

RD1, LT1, RT1 = CMD[1, "read"], CMD[1, "left"], CMD[1, "right"]
RD2, LT2, RT2 = CMD[2, "read"], CMD[2, "left"], CMD[2, "right"]
ANS_F, BLANK_F, BOS_F = V.ANS + FORCED, V.BLANK + FORCED, V.BOS + FORCED
DIGITS_F = [t + FORCED for t in DIGITS]
_DIGIT_TOKENS = bytes(DIGITS)
# A digit t read back: its read answer, then the output t and the next two steps left and a read.
_READ_BACK_STEP = {t: bytes((t + FORCED, t, LT2, LT2, RD2)) for t in DIGITS}


# Python's int <-> str conversions refuse numbers past sys.get_int_max_str_digits() digits (4,300 by
# default, at least 640): a guard against their quadratic time on untrusted input. Operands are our
# own and tested past 10,000 digits, so long ones convert through the decimal module, which has no
# such limit and is subquadratic. The process-wide limit stays as the user set it (raising it even for
# a moment would lift the guard for every thread of the process).
_SHORT = 600  # digits: under every limit Python allows, so int()/str() (the fast path) always work
_SHORT_LIMIT = 10 ** _SHORT


def to_int(digits: str) -> int:
    """int(digits) for decimal digits of any length."""
    return int(digits) if len(digits) <= _SHORT else int(Decimal(digits))


def to_str(n: int) -> str:
    """str(n) for a non-negative int of any length."""
    return str(n) if n < _SHORT_LIMIT else str(Decimal(n))


@dataclass(frozen=True)
class Operands:
    a: str  # decimal digits, no leading zeros
    op: str  # "+" or "*"
    b: str

    @property
    def result(self) -> int:
        a, b = to_int(self.a), to_int(self.b)
        return a + b if self.op == "+" else a * b


def random_number(rng: np.random.Generator, digits: int, allow_zero: bool = True) -> str:
    """A random number of exactly `digits` digits (0 included for one digit if allowed), uniform up to
    a bias below 2^-64: 64 more random bits than the range needs, reduced modulo the range. (The raw
    bit generator: one cheap draw at any length; Generator.integers/bytes cost ~10x more here.)"""
    low = 0 if (digits == 1 and allow_zero) else 10 ** (digits - 1)
    span = 10 ** digits - low
    words = rng.bit_generator.random_raw(span.bit_length() // 64 + 2)
    return to_str(low + int.from_bytes(words.tobytes(), "little") % span)


# What the test operands look like (the arithmetic tasks' `operands` option). Training always draws
# uniform ones; the others are what reviewers of length-generalization claims test besides them:
#   uniform    every digit uniform;
#   carries    a carry at every column: addition draws a and takes b = 10^n - a (a + b = 10^n),
#              multiplication draws the first operand's digits in 5..9 and the second's in 7..9;
#   zero_runs  long runs of zeros inside the number (runs of up to n // 4 zeros between random digits),
#              in both addends, in the first factor.
OPERANDS = ("uniform", "carries", "zero_runs")


def digits_in(rng: np.random.Generator, digits: int, low: int, high: int) -> str:
    """A `digits`-digit number whose digits are uniform in low..high (low >= 1: no leading zero)."""
    return "".join(map(str, rng.integers(low, high + 1, size=digits)))


def zero_runs_number(rng: np.random.Generator, digits: int) -> str:
    """A `digits`-digit number made of runs of zeros (each 1..max(1, digits // 4) long) between
    uniform digits; its first and last digits are not zero."""
    out = [str(rng.integers(1, 10))]
    longest = max(1, digits // 4)
    while len(out) < digits - 1:
        out += ["0"] * int(rng.integers(1, longest + 1)) if rng.random() < 0.5 else [str(rng.integers(0, 10))]
    out = out[:max(1, digits - 1)]
    return "".join(out + ([str(rng.integers(1, 10))] if digits > 1 else []))


def operands_prompt(x: Operands) -> bytes:
    return bytes((V.BOS,)) + chars(f"{x.a}{x.op}{x.b}=")


def position_pointers(memory: Sequence[int], op_cell: int) -> bytes:
    """Script that brings p2 to the last digit of b (via [BLANK]) and p1 to the last digit of a (via
    the operator at `op_cell`). `memory` is the prompt; both pointers start on cell 0."""
    walk_b = packed_walk(2, "right", memory[1:])
    walk_a = packed_walk(1, "right", memory[1:op_cell + 1])
    return walk_b + bytes((RT2, RD2, BLANK_F, LT2, LT2)) + walk_a + bytes((LT1,))


def read_back(memory: Sequence[int], start: int) -> bytes:
    """Script of the answer phase; `memory` ends with [ANS], p2 sits on cell `start`. p2 walks right
    to [ANS], then left over the (carry, digit) pairs, outputting each digit and skipping each carry,
    until it reads the non-digit before the first pair; then [EOS]."""
    memory = bytes(memory)
    read = memory[-2::-2]  # the cells p2 reads walking left two at a time from the last digit
    digits = read[:len(read) - len(read.lstrip(_DIGIT_TOKENS))]
    return (packed_walk(2, "right", memory[start + 1:]) + bytes((LT2, RD2))
            + b"".join(map(_READ_BACK_STEP.__getitem__, digits)) + bytes((read[len(digits)] + FORCED, V.EOS)))


class ArithmeticTask(Task):
    """Operand tasks: answers are decimal numbers; the calculator mode is single_turn."""

    size_name = "digits"
    aliases = {"calculator": "single_turn"}
    num_pointers: int  # of the interactive policy

    def tools(self) -> list[ToolSpec]:
        if self.mode == "interactive":
            return [ToolSpec("pointer_memory", num_pointers=self.num_pointers)]
        return [ToolSpec("calculator")] if self.mode == "single_turn" else []

    def __init__(self, mode: str = "interactive", operands: str = "uniform"):
        super().__init__(self.aliases.get(mode, mode))
        if operands not in OPERANDS:
            raise ValueError(f"{self.name}: operands must be one of {', '.join(OPERANDS)}, got {operands!r}")
        self.operands = operands

    def _operands_repr(self) -> str:
        """", operands='...'" for test operands other than uniform (uniform tasks keep their repr)."""
        return "" if self.operands == "uniform" else f", operands={self.operands!r}"

    def prompt(self, x: Operands) -> list[int]:
        return list(operands_prompt(x))

    def answer(self, x: Operands) -> list[int]:
        return number(to_str(x.result))

    def calculator_script(self, left: int, right: int, result: int) -> list[int]:
        """One `add left right` call, then the answer copied from the result."""
        call = [V.CALL, *text(f"add {to_str(left)} {to_str(right)}"), V.CALL_END]
        out = number(to_str(result))
        return call + forced([V.RESULT, *out, V.RESULT_END]) + [V.ANS, *out, V.EOS]
