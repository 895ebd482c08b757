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
Sizes: sample(rng, n) draws two n-digit operands; sample_train(rng, m) draws each operand's length
uniformly in 1..m (the paper: 1..5).
"""
from __future__ import annotations

import itertools

import numpy as np

from .. import vocab as V
from ..env import ToolSpec
from .arithmetic import (BOS_F, DIGITS_F, LT1, LT2, RD1, RD2, ArithmeticTask, Operands, position_pointers,
                         random_number, read_back)
from .base import CHAR, DIGITS, FORCED, number


def addition_script(x: Operands) -> list[int]:
    memory = [V.BOS, *number(x.a), CHAR["+"], *number(x.b), CHAR["="]]
    script = position_pointers(memory, len(x.a) + 1)
    a = [int(c) for c in reversed(x.a)]
    b = [int(c) for c in reversed(x.b)]
    plus_f = CHAR["+"] + FORCED
    carry = 0
    for i in itertools.count():
        script += (RD1, DIGITS_F[a[i]], LT1) if i < len(a) else (RD1, BOS_F)
        script += (RD2, DIGITS_F[b[i]], LT2) if i < len(b) else (RD2, plus_f)
        if i >= len(a) and i >= len(b) and carry == 0:
            break
        total = (a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) + carry
        carry = total // 10
        thoughts = (DIGITS[carry], DIGITS[total % 10])
        script += thoughts
        memory += thoughts
    script.append(V.ANS)
    memory.append(V.ANS)
    return script + read_back(memory, len(x.a) + 1)


class Addition(ArithmeticTask):
    name = "addition"
    modes = ("interactive", "cot", "single_turn", "direct", "direct_reversed")

    def sample(self, rng: np.random.Generator, size: int) -> Operands:
        n = self.check_size(size)
        return Operands(random_number(rng, n), "+", random_number(rng, n))

    def sample_train(self, rng: np.random.Generator, max_size: int) -> Operands:
        m = self.check_size(max_size, "max_size")
        n1, n2 = rng.integers(1, m + 1, size=2)
        return Operands(random_number(rng, int(n1)), "+", random_number(rng, int(n2)))

    def answer(self, x: Operands) -> list[int]:
        digits = number(str(x.result))
        return digits[::-1] if self.mode == "direct_reversed" else digits

    def tools(self) -> list[ToolSpec]:
        if self.mode == "interactive":
            return [ToolSpec("pointer_memory", num_pointers=2)]
        return [ToolSpec("calculator")] if self.mode == "single_turn" else []

    def _script(self, x: Operands) -> list[int]:
        if self.mode == "interactive":
            return addition_script(x)
        if self.mode == "single_turn":
            return self.calculator_script(int(x.a), int(x.b), x.result)
        return [V.ANS, *self.answer(x), V.EOS]

    def max_steps(self, size: int) -> int:
        nines = "9" * self.check_size(size)  # carries all the way: the longest trajectory
        return self.budget(Operands(nines, "+", nines))
