"""Tower of Hanoi: n disks with sizes drawn without replacement from 1..100, stacked largest first
on rod A; output the moves that bring the pile to rod C (the recursive variant and the carried
iterative format write a move as "(d)XY", disk d from X to Y; the local one writes the state after
each move). Prompt: [BOS](7)(5)(2)= (bottom to top).

variant="iterative" (1 pointer; the paper trains to 8 disks), in two trajectory formats (option
`trajectory`):
* "local" (the default): every token the policy writes depends on the cell the pointer just read
  and on the last few tokens it wrote (tests/test_hanoi.py plays it from a 48-token window). A
  state is "(d)<dir><rod>(d)<dir><rod>...$", one entry per disk, smallest first: its label, the way
  it always moves round ('-': A->C->B->A, '+': A->B->C->A; the largest disk is '-', and the
  directions alternate from disk to disk) and its rod. Each state is copied from the one before,
  cell by cell ([p1.right] [p1.read] <cell> <the new cell>), with one rod changed; case marks what
  was decided:
  - an upper-case first rod in the old state means the last move was not the smallest disk's, so
    this one is: the first entry takes its next rod, written lower case;
  - a lower-case first rod: the first entry is copied upper case, and so is every entry on the
    same rod (the rod just written); the first entry on another rod is the other legal move's disk
    (the smallest disk off the smallest disk's rod) and takes its next rod, written lower case;
  - after the moved entry every rod is copied lower case (the case of the last rod written tells
    whether this state's move is done);
  - a state copied with nothing moved (only possible with every disk on C) is the last: [EOS].
  So the rod a disk moves to is always a function of the two cells just read (its direction and
  rod), the same at every place in the state. The answer is the initial state, one state per move,
  then that last copy (every disk on C, upper case). Before it: a direction pass (the pointer walks
  right to '=', writing each disk's direction after its ')': '-', '+', '-', ...), [ANS], then the
  pointer walks back left to [BOS] writing the disks smallest first on rod A (a label is written when
  its '(' is read; the smallest disk's direction is the last one of the pass, and they alternate),
  '$', and walks right to [ANS], next to the first state.
* "carried" (the first format, as the paper describes it). The output is the initial state, then
  each move followed by the full new state. A state is "<flag>A<disks>B<disks>C<disks>$" (each rod's
  disks bottom to top); the flag carries the two bits the iterative rule needs, so the policy reads
  them with the pointer instead of remembering them: n odd -> 'o'/'O', n even -> 'e'/'E'; lower
  case: the next move is the smallest disk's (it cycles A->C->B for odd n, A->B->C for even n),
  upper case: the next move is the only other legal one.
  1. parity pass: the pointer walks right to '=' (counting disks), back left to [BOS], then right
     again copying the disks into the initial state; [ANS];
  2. per move: the pointer walks right over the last move to the flag of the last state; the move
     "(d)XY"; then the pointer copies the last state cell by cell ([p1.read] x [p1.right]),
     writing the new one (flag toggled, disk d taken off X -- a disk is written once its ')' is
     read -- and put on top of Y);
  3. [EOS] after the state with every disk on C.
  The move and the insertion of its disk on Y depend on tokens a whole state back (the tops of the
  rods, the moving disk's label): results/tasks_notes.md measures what that costs a small model.
variant="recursive" (2 pointers; trained to 7). The output is the move lists S_0 # S_1 # ... # S_n,
S_k moving the k smallest disks from A to C: S_k = swap(B,C)(S_{k-1}) (d_k)AC swap(A,B)(S_{k-1}).
p1 reads the disks right to left (the next disk d_k), p2 copies S_{k-1} twice (forward, writing each
move with rods swapped, then back to its start, then forward again).
  1. p1 walks to '=', [ANS], [p1.left] [p1.read] ')' (a disk is left): '#' ends the empty S_0;
     p2 walks to [ANS] and on to S_0;
  2. for k = 1..n: p2 copies S_{k-1} with B<->C until '#'; p1 reads d_k's digits up to '(' and the
     policy writes "(d_k)AC"; p2 walks back to the '#' (or [ANS]) before S_{k-1} and copies it again
     with A<->B; then [p1.left] [p1.read]: ')' -> '#' and p2 steps onto S_k; [BOS] -> [EOS].
Modes: interactive; cot (the same with every observation predicted as a thought, no tool);
single_turn (one turn of tool use, then none: the pointer reads the prompt as in interactive up to
the first thought -- iterative local: the largest disk; carried: right to '=' and back to [BOS];
recursive: right to '=' -- and from the first thought on, the trajectory is the cot one: the
copies come from the model's own state). Paper, Theorem 1:
with cot or a single turn, a fixed-size state fails once the move lists outgrow it.
Sizes: sample(rng, n) has exactly n disks; sample_train(rng, m) draws n uniformly in 1..m.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import vocab as V
from ..env import ToolSpec
from .base import CHAR, CHAR_OF, CMD, DIGITS, FORCED, Task, chars, cot_script, packed_walk, text, walk

RD1, LT1, RT1 = CMD[1, "read"], CMD[1, "left"], CMD[1, "right"]
RD2, LT2, RT2 = CMD[2, "read"], CMD[2, "left"], CMD[2, "right"]
MAX_DISK = 100
SWAP_BC = {CHAR["B"]: CHAR["C"], CHAR["C"]: CHAR["B"]}
SWAP_AB = {CHAR["A"]: CHAR["B"], CHAR["B"]: CHAR["A"]}
_BC, _AB = str.maketrans("BC", "CB"), str.maketrans("AB", "BA")
HASH, DOLLAR = CHAR["#"], CHAR["$"]
RODS = "ABC"


@dataclass(frozen=True)
class Disks:
    sizes: tuple[int, ...]  # bottom to top, decreasing


def solve_iterative(n: int) -> list[tuple[int, str, str]]:
    """Moves (disk index 0 = smallest, from, to) of the iterative rule."""
    rods = {"A": list(range(n - 1, -1, -1)), "B": [], "C": []}
    cycle = "ACB" if n % 2 else "ABC"
    moves, small_at = [], "A"
    for k in range((1 << n) - 1):
        if k % 2 == 0:
            src, dst = small_at, cycle[(cycle.index(small_at) + 1) % 3]
            small_at = dst
        else:
            x, y = (r for r in RODS if r != small_at)
            src, dst = (x, y) if rods[y] == [] or (rods[x] and rods[x][-1] < rods[y][-1]) else (y, x)
        rods[dst].append(rods[src].pop())
        moves.append((rods[dst][-1], src, dst))
    return moves


def _state(flag: str, rods: dict[str, list[int]], sizes: tuple[int, ...]) -> str:
    return flag + "".join(r + "".join(f"({sizes[-1 - d]})" for d in rods[r]) for r in RODS) + "$"


def iterative_answer_text(x: Disks) -> str:
    n = len(x.sizes)
    flag = "o" if n % 2 else "e"
    rods = {"A": list(range(n - 1, -1, -1)), "B": [], "C": []}
    out = [_state(flag, rods, x.sizes)]
    for d, src, dst in solve_iterative(n):
        rods[dst].append(rods[src].pop())
        flag = flag.swapcase()
        out.append(f"({x.sizes[-1 - d]}){src}{dst}" + _state(flag, rods, x.sizes))
    return "".join(out)


def iterative_script(x: Disks) -> list[int]:
    prompt = hanoi_prompt(x)
    states = iterative_answer_text(x)
    first_state = states[:states.index("$") + 1]
    # parity pass: right to '=', back left to [BOS], right again copying the disks
    script = walk(1, "right", prompt[1:])
    script += walk(1, "left", reversed(prompt[:-1]))
    script += text(first_state[:2])  # the flag, 'A'
    for c, written in zip(prompt[1:], _copied(prompt[1:], None, None)):
        script += (RT1, RD1, c + FORCED, *written)
    script.append(V.ANS)
    memory = prompt + text(first_state) + [V.ANS]
    pos, state_start = len(prompt) - 1, len(prompt)  # the pointer is on '='
    for block in states[len(first_state):].split("$")[:-1]:
        cut = block.index(")") + 3
        move, new_state = block[:cut], block[cut:] + "$"
        script += walk(1, "right", memory[pos + 1:state_start + 1])
        script += text(move)
        memory += text(move)
        pos = memory.index(CHAR["$"], state_start)
        old = memory[state_start:pos + 1]
        for c, written in zip(old, _copied(old, move[:cut - 2], move[-1])):
            script += (RD1, c + FORCED, *written)
            if c != DOLLAR:
                script.append(RT1)
        state_start = len(memory)
        memory += text(new_state)
    return script + [V.EOS]


def _copied(cells: list[int], disk: str | None, dst: str | None) -> list[list[int]]:
    """What the policy writes after reading each cell of a state it copies (or of the prompt, for
    the initial state): the flag toggled; a disk once its ')' is read, unless it is the moving
    `disk`; the moving disk just before the rod letter (or '$') that follows rod `dst`."""
    after_dst = {"A": "B", "B": "C", "C": "$", None: None}[dst]
    out, group = [], ""
    for c in cells:
        ch = CHAR_OF[c]
        if ch in "oOeE":
            out.append(text(ch.swapcase()))
        elif ch == "(" or ch.isdigit():
            group += ch
            out.append([])
        elif ch == ")":
            out.append(text(group + ")") if group + ")" != disk else [])
            group = ""
        elif ch == "=":
            out.append(text("BC$"))
        else:
            out.append(text((disk if ch == after_dst else "") + ch))
    return out


# Each disk always moves the same way round: '-' A->C->B->A, '+' A->B->C->A. The largest disk is a
# '-' one (it moves once, A->C) and the directions alternate from one disk to the next smaller.
NEXT_ROD = {"-": {"A": "C", "C": "B", "B": "A"}, "+": {"A": "B", "B": "C", "C": "A"}}


def local_states(x: Disks) -> list[str]:
    """The local format's states (module docstring), each copied from the one before by the rule."""
    n = len(x.sizes)
    entries = [f"({d})" + "-+"[(n - 1 - i) % 2] for i, d in enumerate(reversed(x.sizes))]
    rods, states = ["A"] * n, []
    while True:
        states.append("".join(map(str.__add__, entries, rods)) + "$")
        rods, moved = _local_step([e[-1] for e in entries], rods)
        if not moved:
            return states + ["".join(map(str.__add__, entries, rods)) + "$"]


def _local_step(directions: list[str], rods: list[str]) -> tuple[list[str], bool]:
    """The rods of the next state, written as the copy writes them, and whether a disk moved."""
    out = [NEXT_ROD[directions[0]][rods[0]].lower() if rods[0].isupper() else rods[0].upper()]
    for direction, rod in zip(directions[1:], rods[1:]):
        rod, last = rod.upper(), out[-1]
        out.append(rod.lower() if last.islower() else rod if rod == last else NEXT_ROD[direction][rod].lower())
    return out, out[-1].islower()


def local_iterative_script(x: Disks) -> bytes:
    prompt = hanoi_prompt(x)
    states = local_states(x)
    directions, script = bytearray(), bytearray()
    for c in prompt[1:]:  # the direction pass
        script += bytes((RT1, RD1, c + FORCED))
        if c == CHAR[")"]:
            directions.append(CHAR["+" if directions and directions[-1] == CHAR["-"] else "-"])
            script.append(directions[-1])
    script.append(V.ANS)
    label, direction = [], directions[-1]
    for c in reversed(prompt[:-1]):  # back to [BOS], writing the disks smallest first
        script += bytes((LT1, RD1, c + FORCED))
        if c == CHAR["("]:
            script += bytes(text("(" + "".join(CHAR_OF[d] for d in reversed(label)) + ")"))
            script += bytes((direction, CHAR["A"]))
            label, direction = [], CHAR["+"] + CHAR["-"] - direction
        elif c in DIGITS:
            label.append(c)
    script.append(DOLLAR)
    script += packed_walk(1, "right", [*prompt[1:], *directions, V.ANS])
    for old, new in zip(states, states[1:]):
        script += _copy_cells(chars(old), chars(new))
    return bytes(script + bytes((V.EOS,)))


def _copy_cells(old: bytes, new: bytes) -> bytearray:
    """[p1.right] [p1.read] <old cell> <new cell> for every cell (one slice assignment each)."""
    out = bytearray(4 * len(old))
    out[0::4], out[1::4] = bytes((RT1,)) * len(old), bytes((RD1,)) * len(old)
    out[2::4], out[3::4] = bytes(c + FORCED for c in old), new
    return out


def hanoi_prompt(x: Disks) -> list[int]:
    return [V.BOS, *text("".join(f"({d})" for d in x.sizes) + "=")]


def recursive_answer_text(x: Disks) -> str:
    lists = [""]
    for d in reversed(x.sizes):
        prev = lists[-1]
        lists.append(prev.translate(_BC) + f"({d})AC" + prev.translate(_AB))
    return "#".join(lists)


def recursive_script(x: Disks) -> list[int]:
    prompt = hanoi_prompt(x)
    script = walk(1, "right", prompt[1:])
    script += [V.ANS, LT1, RD1, CHAR[")"] + FORCED, HASH]
    memory = prompt + [V.ANS, HASH]
    script += walk(2, "right", memory[1:len(prompt) + 1]) + [RT2]
    start = len(prompt) + 1  # S_0 starts (and, empty, ends) here
    for k, d in enumerate(reversed(x.sizes), start=1):
        end = memory.index(HASH, start)
        previous = memory[start:end + 1]
        script += _copy_list(previous, SWAP_BC)
        label = text(str(d))
        script += walk(1, "left", [*reversed(label), CHAR["("]])
        script += text(f"({d})AC")
        script += walk(2, "left", reversed(memory[start - 1:end])) + [RT2]
        script += _copy_list(previous, SWAP_AB)
        memory += [SWAP_BC.get(c, c) for c in previous[:-1]] + text(f"({d})AC")
        memory += [SWAP_AB.get(c, c) for c in previous[:-1]]
        if k == len(x.sizes):
            return script + [LT1, RD1, V.BOS + FORCED, V.EOS]
        script += [LT1, RD1, CHAR[")"] + FORCED, HASH, RT2]
        memory.append(HASH)
        start = end + 1
    raise AssertionError("unreachable: Hanoi has at least one disk")


def _copy_list(cells: list[int], swap: dict[int, int]) -> list[int]:
    """p2 on a move list's first cell: read, write it with rods swapped, step right; stop on '#'."""
    body = [t for c in cells[:-1] for t in (RD2, c + FORCED, swap.get(c, c), RT2)]
    return body + [RD2, HASH + FORCED]


class Hanoi(Task):
    name = "hanoi"
    modes = ("interactive", "cot", "single_turn")
    size_name = "disks"
    variants = ("iterative", "recursive")
    trajectories_of = {"iterative": ("local", "carried"), "recursive": ("local",)}

    def __init__(self, mode: str = "interactive", variant: str = "iterative", trajectory: str = "local"):
        super().__init__(mode)
        if variant not in self.variants:
            raise ValueError(f"hanoi: variant must be one of {self.variants}, got {variant!r}")
        if trajectory not in self.trajectories_of[variant]:
            raise ValueError(f"hanoi: trajectory of the {variant} variant must be one of "
                             f"{self.trajectories_of[variant]}, got {trajectory!r}")
        self.variant, self.trajectory = variant, trajectory

    def __repr__(self) -> str:
        return f"Hanoi(mode={self.mode!r}, variant={self.variant!r}, trajectory={self.trajectory!r})"

    def sample(self, rng: np.random.Generator, size: int) -> Disks:
        n = self.check_size(size)
        if n > MAX_DISK:
            raise ValueError(f"hanoi: size (disks) must be <= {MAX_DISK}, got {n}")
        return Disks(tuple(sorted(rng.choice(np.arange(1, MAX_DISK + 1), n, replace=False).tolist(), reverse=True)))

    def sample_train(self, rng: np.random.Generator, max_size: int) -> Disks:
        return self.sample(rng, int(rng.integers(1, self.check_size(max_size, "max_size") + 1)))

    def prompt(self, x: Disks) -> list[int]:
        return hanoi_prompt(x)

    def answer(self, x: Disks) -> list[int]:
        if self.variant == "recursive":
            return text(recursive_answer_text(x))
        if self.trajectory == "local":
            return text("".join(local_states(x)))
        states = iterative_answer_text(x)
        return text(states[states.index("$") + 1:])  # the initial state is a thought, before [ANS]

    def tools(self) -> list[ToolSpec]:
        if self.mode == "cot":
            return []
        # Trajectories reach millions of tokens (14 disks iterative: ~1.3M memory cells).
        return [ToolSpec("pointer_memory", num_pointers=1 if self.variant == "iterative" else 2, max_cells=1 << 25)]

    def _script(self, x: Disks, mode: str) -> list[int]:
        script = (recursive_script(x) if self.variant == "recursive" else
                  local_iterative_script(x) if self.trajectory == "local" else iterative_script(x))
        return cot_script(script, self.answer(x), keep_first_turn=True) if mode == "single_turn" else script

    def max_steps(self, size: int) -> int:
        n = self.check_size(size)
        return self.budget(Disks(tuple(range(MAX_DISK, MAX_DISK - n, -1))))  # 3-digit labels: longest
