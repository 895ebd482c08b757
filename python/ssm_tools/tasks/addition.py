"""Addition "a+b=" with a 2-pointer memory, and the paper's ablations.

Interactive trajectory (every step decided by the last few tokens):
  1. position: p2 walks to [BLANK] and back to b's last digit, p1 walks to '+' and back one cell;
  2. digit loop, one column per step:  [p1.read] x ([p1.left] if x is a digit)
     [p2.read] y ([p2.left] if y is a digit)  then the thoughts  carry digit  of x + y + carry-in
     (a non-digit reads as 0: [BOS] for p1, '+' for p2 -- a pointer that read one stays put).
     When both read non-digits and the carry-in is 0: [ANS];
  3. read back: p2 walks right to [ANS], then left two cells at a time, outputting each digit,
     until it reads '='; [EOS].
Modes: interactive, cot (the same with observations predicted), single_turn (alias calculator: one
`add a b` call), direct (answer at once), direct_reversed (answer reversed, least significant first).
Sizes: sample(rng, n) draws two n-digit operands (uniform digits, or carry-heavy / zero-run ones:
the `operands` option, arithmetic.OPERANDS); sample_train(rng, m) draws each operand's length uniformly
in 1..m (the paper: 1..5) and its digits uniformly.
"""
from __future__ import annotations

from collections.abc import Sequence
from itertools import zip_longest

import numpy as np

from .. import vocab as V
from .arithmetic import (BOS_F, DIGITS_F, LT1, LT2, RD1, RD2, ArithmeticTask, Operands, digits_in,
                         operands_prompt, position_pointers, random_number, read_back, to_int, to_str,
                         zero_runs_number)
from .base import CHAR, DIGITS, FORCED, number


def _column_steps() -> list[tuple[bytes, int]]:
    """Every step of the digit loop, precomputed (oracles are built at training-data speed): index
    (x + 1) * 22 + (y + 1) * 2 + carry_in for digits x, y (-1: the pointer reads a non-digit) -> (the
    step's script, carry out); the step with x = y = -1 and carry_in 0 ends the loop with [ANS]."""
    steps = []
    for x in range(-1, 10):
        for y in range(-1, 10):
            for carry in (0, 1):
                reads = ((RD1, DIGITS_F[x], LT1) if x >= 0 else (RD1, BOS_F)) + \
                        ((RD2, DIGITS_F[y], LT2) if y >= 0 else (RD2, PLUS_F))
                total = max(x, 0) + max(y, 0) + carry
                ends = x < 0 and y < 0 and carry == 0
                steps.append((bytes(reads + ((V.ANS,) if ends else (DIGITS[total // 10], DIGITS[total % 10]))),
                              total // 10))
    return steps


PLUS_F = CHAR["+"] + FORCED
_STEPS = _column_steps()
# After the last digit column: the carry column if a carry is left, then the step that ends the loop.
_LAST_STEPS = (_STEPS[0][0], _STEPS[1][0] + _STEPS[0][0])
_PAD = ord("0") - 1  # ASCII code of the digit "-1" (a pointer past the operand's first digit)
# Deletes all but the tokens the digit loop adds to memory: its thoughts (digits) and [ANS].
_NOT_THOUGHT = bytes(t for t in range(256) if t not in DIGITS and t != V.ANS)


def addition_script(x: Operands) -> bytes:
    """The interactive script, as bytes: each digit column is one table entry, picked by the ASCII
    codes of its two digits and the carry."""
    prompt = operands_prompt(x)
    steps, carry = [], 0
    for a, b in zip_longest(x.a[::-1].encode(), x.b[::-1].encode(), fillvalue=_PAD):
        step, carry = _STEPS[(a - _PAD) * 22 + (b - _PAD) * 2 + carry]
        steps.append(step)
    steps.append(_LAST_STEPS[carry])
    loop = b"".join(steps)
    op_cell = len(x.a) + 1
    memory = prompt + loop.translate(None, _NOT_THOUGHT)
    return position_pointers(prompt, op_cell) + loop + read_back(memory, op_cell)


class Addition(ArithmeticTask):
    name = "addition"
    modes = ("interactive", "cot", "single_turn", "direct", "direct_reversed")
    num_pointers = 2

    def __repr__(self) -> str:
        return f"Addition(mode={self.mode!r}{self._operands_repr()})"

    def sample(self, rng: np.random.Generator, size: int) -> Operands:
        n = self.check_size(size)
        if self.operands == "carries":  # a's first digit below 9: b = 10^n - a keeps n digits
            a = digits_in(rng, 1, 1, 8) + (random_number(rng, n - 1).zfill(n - 1) if n > 1 else "")
            return Operands(a, "+", to_str(10 ** n - to_int(a)))
        if self.operands == "zero_runs":
            return Operands(zero_runs_number(rng, n), "+", zero_runs_number(rng, n))
        return Operands(random_number(rng, n), "+", random_number(rng, n))

    def sample_train(self, rng: np.random.Generator, max_size: int) -> Operands:
        m = self.check_size(max_size, "max_size")
        n1, n2 = rng.integers(1, m + 1, size=2)
        return Operands(random_number(rng, int(n1)), "+", random_number(rng, int(n2)))

    def answer(self, x: Operands) -> list[int]:
        digits = number(to_str(x.result))
        return digits[::-1] if self.mode == "direct_reversed" else digits

    def _script(self, x: Operands, mode: str) -> Sequence[int]:
        if mode == "interactive":
            return addition_script(x)
        if mode == "single_turn":
            return self.calculator_script(to_int(x.a), to_int(x.b), x.result)
        return [V.ANS, *self.answer(x), V.EOS]

    def max_steps(self, size: int) -> int:
        nines = "9" * self.check_size(size)  # carries all the way: the longest trajectory
        return self.budget(Operands(nines, "+", nines))
