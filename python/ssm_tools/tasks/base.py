"""The Task interface every task implements, and what all tasks share.

A task turns an *instance* (sampled at a size) into a prompt, the tokens an ideal policy emits
(`oracle`), the tools of the episode, and a grader of the output stream.

Oracles are written as *scripts*: the whole expected token stream after the prompt, model tokens as
they are and forced tokens (tool answers) marked with `forced()` (id + FORCED). Writing down the
answers the oracle expects buys three things: `oracle()` is the script's model tokens; the "cot"
mode is derived from it (the model predicts the observations itself, no tool); and the tests check
that the real loop (`replay`) produced exactly the stream the oracle expected.

Every script value is below 256, so a script is a list of ints or, on the hot paths, bytes (built
with joins and table lookups at C speed); `trajectories()` hands prompts and oracles to `replay` as
bytes, which C++ widens without a Python int per token.

Sizes: `sample(rng, size)` draws a test instance of exactly this size (e.g. two operands of exactly
`size` digits); `sample_train(rng, max_size)` draws the paper's training distribution up to
`max_size` (e.g. operand lengths uniform in 1..max_size).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .. import vocab as V
from ..env import Env, replay

# Marks a forced token inside a script (id + FORCED). Scripts then hold values below 256, so bytes
# operations filter them at C speed (oracles are built at training-data rates).
FORCED = V.VOCAB_SIZE
assert 2 * FORCED <= 256
_FORCED_IDS = bytes(range(FORCED, 2 * FORCED))

# Character tokens, by character (the vocabulary maps printable ASCII one to one).
CHAR = {chr(c): V.encode(chr(c))[0] for c in range(32, 127)}
CHAR["\n"] = V.encode("\n")[0]
CHAR_OF = {t: c for c, t in CHAR.items()}
DIGITS = [CHAR[str(d)] for d in range(10)]
# Pointer commands by (pointer 1-based, op), e.g. CMD[1, "read"].
CMD = {(p + 1, op): V.pointer_cmd(p, op) for p in range(4) for op in ("read", "left", "right", "write")}
_COMMANDS = frozenset(CMD.values())
_READS = frozenset(CMD[p, "read"] for p in range(1, 5))
_WRITES = frozenset(CMD[p, "write"] for p in range(1, 5))
_CHARS = frozenset(CHAR.values())
# A CoT model has no tool; a control-token observation ([BOS], [BLANK]) is not a valid thought
# (the parser answers [ERR]), so the CoT script writes it as a character.
# A text answer becomes the lines it holds, ended by '\n'.
_COT_CHAR = {V.BOS: CHAR["^"], V.BLANK: CHAR["_"], V.RESULT_END: CHAR["\n"]}


def forced(tokens: Sequence[int]) -> list[int]:
    """Mark tokens as forced (a tool's answer) inside a script."""
    return [t + FORCED for t in tokens]


# Character tokens fit in a byte: bytes.translate maps a whole string in C (the oracles' hot path).
_CHAR_TABLE = bytes(CHAR.get(chr(i), 0) for i in range(256))


def chars(s: str) -> bytes:
    """The character tokens of `s` (digits, letters, punctuation, '\\n'), one byte each."""
    return s.encode("ascii").translate(_CHAR_TABLE)


def text(s: str) -> list[int]:
    out = list(chars(s))
    if 0 in out:
        raise ValueError(f"text has a character with no token: {s!r}")
    return out


def number(digits: str) -> list[int]:
    return list(chars(digits))


# (pointer, "left"/"right") -> token id -> one step of a walk: move, read, the forced answer.
_WALK_STEPS = {(p, d): [bytes((CMD[p, d], CMD[p, "read"], t + FORCED)) for t in range(V.VOCAB_SIZE)]
               for p in range(1, 5) for d in ("left", "right")}


def packed_walk(pointer: int, direction: str, cells: Iterable[int]) -> bytes:
    """Script of pointer `pointer` (1-based) stepping over `cells` ("left" or "right"): each step a
    move and a read, answered by the cell. As bytes, one join of table entries (oracles run at
    training-data speed)."""
    return b"".join(map(_WALK_STEPS[pointer, direction].__getitem__, cells))


def walk(pointer: int, direction: str, cells: Iterable[int]) -> list[int]:
    """packed_walk as a list of ints."""
    return list(packed_walk(pointer, direction, cells))


def expected_stream(script: Sequence[int]) -> list[int]:
    """The token stream the real loop produces for this script (forced marks removed)."""
    return [t % FORCED for t in script]


def cot_script(script: Sequence[int], answer: Sequence[int], keep_first_turn: bool = False) -> list[int]:
    """The CoT ablation of an interactive script: commands and tool calls dropped, every observation
    before [ANS] written by the model as a thought, then [ANS], the answer and [EOS] (what the
    interactive policy reads back after [ANS] has no tool to come from).

    keep_first_turn=True gives the single-turn ablation instead: the script's first turn of tool use
    (its commands, calls and their answers before the model's first thought or [ANS]) stays as it
    is, answered by the tool; from there on the model is on its own, as in CoT."""
    out: list[int] = []
    in_call = False
    for j, t in enumerate(script):
        if t == V.CALL or t == V.CALL_END:
            in_call = t == V.CALL
        elif t >= FORCED:
            u = t - FORCED
            if u != V.RESULT:
                out.append(_COT_CHAR.get(u, u))
        elif not in_call and t not in _COMMANDS:  # a thought, or [ANS]
            if keep_first_turn:
                out, keep_first_turn = list(script[:j]), False
            if t == V.ANS:
                break
            out.append(t)
    return out + [V.ANS, *answer, V.EOS]


def _grammar_mask(tokens: Sequence[int]) -> list[bool]:
    """Which tokens the model emitted, recovered from the grammar alone: a read's one answer token
    and [RESULT]..[/RESULT] spans are forced (a move's [ERR] answer is never an output either way)."""
    mask = []
    after_read = in_result = False
    for t in tokens:
        model = not (after_read or in_result or t == V.RESULT)
        mask.append(model)
        in_result = (in_result or t == V.RESULT) and t != V.RESULT_END
        after_read = model and t in _READS
    return mask


def output_stream(tokens: Sequence[int], mask: Sequence[bool] | None = None) -> tuple[list[int], bool]:
    """(the output stream, whether the model ended the episode with [EOS]).

    Outputs are what the model's tokens after its first [ANS] put into memory: characters (and later
    [ANS]s), not commands, a write's symbol, or anything inside [CALL]..[/CALL]. `mask` (True where
    the model emitted the token, as in Transcript.loss_mask) defaults to what the grammar implies."""
    tokens = tokens.tolist() if hasattr(tokens, "tolist") else tokens
    if mask is None:
        mask = _grammar_mask(tokens)
    outputs: list[int] = []
    seen_ans = in_call = after_write = False
    for t, model in zip(tokens, mask):
        if not model:
            continue
        if t == V.EOS:
            return outputs, True
        if after_write:
            after_write = False
        elif in_call or t == V.CALL:
            in_call = t != V.CALL_END
        elif t in _COMMANDS:
            after_write = t in _WRITES
        elif seen_ans and (t in _CHARS or t == V.ANS):
            outputs.append(t)
        else:
            seen_ans = seen_ans or t == V.ANS
    return outputs, False


class Task(ABC):
    """One task of the paper in one mode. Subclasses set name, modes, size_name, min_size and
    implement sample, sample_train, prompt, answer, tools, max_steps and `_script` (the script of
    every mode but "cot", which is derived)."""

    name: str
    modes: tuple[str, ...]
    size_name: str
    min_size: int = 1
    # Oracles that wait on their tools (the coding sandbox runs programs, the GIL released) are
    # built on this many threads by `trajectories` (on its num_threads instead, when given).
    oracle_threads: int = 1

    def __init__(self, mode: str = "interactive"):
        if mode not in self.modes:
            raise ValueError(f"{self.name}: mode must be one of {self.modes}, got {mode!r}")
        self.mode = mode

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"

    # -- what each task defines --------------------------------------------------------------------
    @abstractmethod
    def sample(self, rng: np.random.Generator, size: int) -> Any: ...

    @abstractmethod
    def sample_train(self, rng: np.random.Generator, max_size: int) -> Any: ...

    @abstractmethod
    def prompt(self, inst) -> list[int]: ...

    @abstractmethod
    def answer(self, inst) -> list[int]: ...

    @abstractmethod
    def tools(self) -> list: ...

    @abstractmethod
    def max_steps(self, size: int) -> int: ...

    @abstractmethod
    def _script(self, inst, mode: str) -> Sequence[int]:
        """The script of `mode` (any mode but "cot", which is derived from "interactive"): a list of
        ints or bytes."""

    # -- shared ------------------------------------------------------------------------------------
    def check_size(self, size: int, what: str = "size") -> int:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < self.min_size:
            raise ValueError(f"{self.name}: {what} ({self.size_name}) must be an integer >= {self.min_size}, "
                             f"got {size!r}")
        return int(size)

    def _mode_script(self, inst) -> Sequence[int]:
        if self.mode == "cot":
            return cot_script(self._script(inst, "interactive"), self.answer(inst))
        return self._script(inst, self.mode)

    def script(self, inst) -> list[int]:
        return list(self._mode_script(inst))

    def packed_oracle(self, inst) -> bytes:
        """The oracle's model tokens (the script without its forced tokens), one byte each: what
        `trajectories` hands to `replay`."""
        return bytes(self._mode_script(inst)).translate(None, _FORCED_IDS)

    def oracle(self, inst) -> list[int]:
        return list(self.packed_oracle(inst))

    def grade(self, inst, tokens: Sequence[int], mask: Sequence[bool] | None = None) -> bool:
        outputs, finished = output_stream(tokens, mask)
        return finished and outputs == self.answer(inst)

    def budget(self, worst_case_inst) -> int:
        """Step budget from the longest instance of a size: its whole trajectory plus 10% (cached:
        a long trajectory takes seconds to build)."""
        cache = self.__dict__.setdefault("_budgets", {})
        if worst_case_inst not in cache:
            n = len(self.prompt(worst_case_inst)) + len(self._mode_script(worst_case_inst))
            cache[worst_case_inst] = math.ceil(1.1 * n) + 16
        return cache[worst_case_inst]

    def trajectories(self, rng: np.random.Generator, sizes: Sequence[int], train: bool = False,
                     num_threads: int = 0):
        """(Transcript, instances): one instance per entry of `sizes` (drawn by `sample`, or by
        `sample_train` with the entry as max_size when train=True), its oracle played through the
        real loop (`replay`). num_threads: the replay's threads (0: all cores), and the oracles' for a
        task whose oracles wait on their tools (oracle_threads > 1)."""
        draw = self.sample_train if train else self.sample
        insts = [draw(rng, s) for s in sizes]
        max_len = max(map(self.max_steps, set(sizes)))
        return self.oracle_transcript(insts, max_len, int(rng.integers(1 << 31)), num_threads), insts

    def oracle_transcript(self, insts: Sequence, max_len: int, seed: int = 0, num_threads: int = 0):
        """The Transcript of the instances' oracles played through the real loop (`replay`), episodes
        of at most `max_len` tokens."""
        env = Env(self.tools(), batch_size=len(insts), max_len=max_len, num_threads=num_threads)
        prompts = [bytes(self.prompt(i)) for i in insts]
        threads = (num_threads or self.oracle_threads) if self.oracle_threads > 1 else 1
        if threads > 1:
            with ThreadPoolExecutor(threads) as pool:
                oracles = list(pool.map(self.packed_oracle, insts))
        else:
            oracles = [self.packed_oracle(i) for i in insts]
        return replay(env, prompts, oracles, seed=seed)
