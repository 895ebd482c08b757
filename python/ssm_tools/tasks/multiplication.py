"""Multiplication "a*b=" (n-digit x k-digit, k = 1 or 2) with a 3-pointer memory, and the
multiplication/addition mixture.

Long multiplication, accumulating: row j is a * b_j * 10^j plus row j-1, written as (carry, digit)
pairs; the last row is the product. Pointers: p1 reads a (right to left), p2 sits on the digit b_j
of the row, p3 reads the previous row's digits (left to right, two cells at a time). The paper uses
max(k, 2) pointers; the third pointer keeps every decision local (the paper's separate row-sum
phase would need a pointer to walk past the operator with two different purposes).
  1. position p2 on b's last digit and p1 on a's last digit (as for addition);
  2. one column per step:  [p1.read] x ([p1.left] if digit)  [p2.read] b_j
     [p3.read] r ([p3.right] [p3.right] if digit)  then  carry digit  of x*b_j + r + carry-in
     (non-digits read as 0). When p1 and p3 read non-digits and the carry-in is 0, the row ends;
  3. row end: [p2.left] [p2.read]: a digit is the next b_j: the thoughts '#' '#' close the row (two
     cells, so p3 stepping two at a time stops on one), p3 walks from [BOS] to '=' and on to the
     row's first digit, which is copied (the row's 10^j shift, with carry 0), and p1 walks back to
     a's last digit; the operator means no digit is left: [ANS] and the read-back of addition
     (p2 walks right to [ANS] and outputs the last row's digits from the left).
Modes: interactive, cot, single_turn (calculator: `add a*b_0 a*b_1*10`, the partial products
computed in the head). Sizes: a has exactly n digits (training: 1..max_size); b has exactly k digits.
The mixture draws addition (weight add_weight) or n x 2 multiplication.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from .. import vocab as V
from .addition import Addition, addition_script
from .arithmetic import (BOS_F, DIGITS_F, LT1, LT2, RD1, RD2, ArithmeticTask, Operands, digits_in,
                         position_pointers, random_number, read_back, to_int, zero_runs_number)
from .base import CHAR, CMD, DIGITS, FORCED, number, walk

RD3, RT3 = CMD[3, "read"], CMD[3, "right"]
HASH = CHAR["#"]


def multiplication_script(x: Operands) -> bytes:
    memory = [V.BOS, *number(x.a), CHAR["*"], *number(x.b), CHAR["="]]
    op_cell = len(x.a) + 1
    script = list(position_pointers(memory, op_cell))
    a = [int(c) for c in reversed(x.a)]
    b = [int(c) for c in reversed(x.b)]
    previous: list[int] = []  # digits p3 reads in this row (the previous row's, shift digit excepted)
    p3_stop = BOS_F  # what p3 reads once it has no digit left
    for j, b_j in enumerate(b):
        row: list[int] = []
        carry = 0
        for i in itertools.count():
            script += (RD1, DIGITS_F[a[i]], LT1) if i < len(a) else (RD1, BOS_F)
            script += (RD2, DIGITS_F[b_j], RD3)
            script += (DIGITS_F[previous[i]], RT3, RT3) if i < len(previous) else (p3_stop,)
            if i >= len(a) and i >= len(previous) and carry == 0:
                break
            total = (a[i] * b_j if i < len(a) else 0) + (previous[i] if i < len(previous) else 0) + carry
            carry = total // 10
            row.append(total % 10)
            thoughts = (DIGITS[carry], DIGITS[total % 10])
            script += thoughts
            memory += thoughts
        next_cell = DIGITS_F[b[j + 1]] if j + 1 < len(b) else CHAR["*"] + FORCED
        script += (LT2, RD2, next_cell)
        if j + 1 == len(b):
            break
        script += _next_row(memory, op_cell, row[0])
        previous, p3_stop = row[1:], HASH + FORCED
    script.append(V.ANS)
    memory.append(V.ANS)
    return bytes(script) + read_back(memory, op_cell)


def _next_row(memory: list[int], op_cell: int, first_digit: int) -> list[int]:
    """Row transition: close the row, bring p3 to its second digit (copying the first: the shift),
    p1 back to a's last digit. Extends `memory` with the thoughts."""
    memory += (HASH, HASH)
    row_start = memory.index(CHAR["="]) + 1
    walk_p3 = walk(3, "right", memory[1:row_start])
    walk_p1 = walk(1, "right", memory[1:op_cell + 1])
    copy = (DIGITS[0], DIGITS[first_digit])
    memory += copy
    return [HASH, HASH, *walk_p3, RT3, RT3, RD3, DIGITS_F[first_digit], *copy, RT3, RT3, *walk_p1, LT1]


class Multiplication(ArithmeticTask):
    name = "multiplication"
    modes = ("interactive", "cot", "single_turn")
    num_pointers = 3

    def __init__(self, mode: str = "interactive", second_digits: int = 1, operands: str = "uniform"):
        super().__init__(mode, operands)
        if second_digits not in (1, 2):
            raise ValueError(f"multiplication: second_digits must be 1 or 2, got {second_digits!r}")
        self.second_digits = second_digits

    def __repr__(self) -> str:
        return f"Multiplication(mode={self.mode!r}, second_digits={self.second_digits}{self._operands_repr()})"

    def sample(self, rng: np.random.Generator, size: int) -> Operands:
        n = self.check_size(size)
        if self.operands == "carries":
            return Operands(digits_in(rng, n, 5, 9), "*", digits_in(rng, self.second_digits, 7, 9))
        if self.operands == "zero_runs":
            return Operands(zero_runs_number(rng, n), "*", random_number(rng, self.second_digits, allow_zero=False))
        return self._draw(rng, n)

    def sample_train(self, rng: np.random.Generator, max_size: int) -> Operands:
        return self._draw(rng, int(rng.integers(1, self.check_size(max_size, "max_size") + 1)))

    def _draw(self, rng: np.random.Generator, n: int) -> Operands:
        # No zero operand: a*0 would be a row of zeros with leading zeros.
        return Operands(random_number(rng, n, allow_zero=False), "*",
                        random_number(rng, self.second_digits, allow_zero=False))

    def _script(self, x: Operands, mode: str) -> Sequence[int]:
        if mode == "single_turn":
            a, b = to_int(x.a), x.b.rjust(2, "0")
            return self.calculator_script(a * int(b[1]), a * int(b[0]) * 10, x.result)
        return multiplication_script(x)

    def max_steps(self, size: int) -> int:
        return self.budget(Operands("9" * self.check_size(size), "*", "9" * self.second_digits))


class Mixture(ArithmeticTask):
    """n x 2 multiplication mixed with addition of two n-digit numbers (weight add_weight)."""

    name = "mixture"
    modes = ("interactive",)
    num_pointers = 3  # multiplication's; addition uses the first two

    def __init__(self, mode: str = "interactive", add_weight: float = 0.5):
        super().__init__(mode)
        if not isinstance(add_weight, (int, float)) or not 0 <= add_weight <= 1:
            raise ValueError(f"mixture: add_weight must be a number in [0, 1], got {add_weight!r}")
        self.add_weight = float(add_weight)
        self.parts = (Addition(mode), Multiplication(mode, second_digits=2))

    def __repr__(self) -> str:
        return f"Mixture(mode={self.mode!r}, add_weight={self.add_weight})"

    def _part(self, rng: np.random.Generator) -> ArithmeticTask:
        return self.parts[0] if rng.random() < self.add_weight else self.parts[1]

    def sample(self, rng: np.random.Generator, size: int) -> Operands:
        return self._part(rng).sample(rng, size)

    def sample_train(self, rng: np.random.Generator, max_size: int) -> Operands:
        return self._part(rng).sample_train(rng, max_size)

    def _script(self, x: Operands, mode: str) -> Sequence[int]:
        return addition_script(x) if x.op == "+" else multiplication_script(x)

    def max_steps(self, size: int) -> int:
        return max(part.max_steps(size) for part in self.parts)
