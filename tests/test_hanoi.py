"""Tower of Hanoi's "local" iterative trajectory: everything the model writes follows from the last
WINDOW tokens of its stream. A policy that sees nothing else (`next_tokens` below, written from the
format's description in ssm_tools/tasks/hanoi.py, not from the oracle's code) reproduces the whole
oracle trajectory, which the real tool loop plays (tests/test_tasks.py checks the answers against a
recursive solver up to 14 disks)."""
import numpy as np
import pytest

from ssm_tools import vocab as V
from ssm_tools.tasks import get_task
from ssm_tools.tasks.base import CHAR, CHAR_OF, CMD, FORCED
from ssm_tools.tasks.hanoi import Disks

WINDOW = 48  # tokens: 16 pointer steps, a little over two disk entries (labels up to "(100)")
RT, LT, RD = CMD[1, "right"], CMD[1, "left"], CMD[1, "read"]
CYCLE = {"-": "ACB", "+": "ABC"}  # the way a disk moves round


def events(window):
    """(observation, command before it, what the model wrote after it) for every read in the
    window; `window` holds (token, forced) pairs."""
    out = []
    for j in range(1, len(window)):
        if window[j][1] and window[j - 1][0] == RD and j >= 2:
            written = []
            for t, forced in window[j + 1:]:
                if forced or t in (RT, LT, RD) or t == V.EOS:
                    break
                written.append(t)
            out.append((window[j][0], window[j - 2][0], written))
    return out


def phase(reads) -> str:
    """Which pass a read walking right belongs to: "parity" (over the prompt, writing each disk's
    direction), "seek" (back to the first state, writing nothing) or "copy"."""
    before = reads[:-1]
    if not before:
        return "parity"
    obs, _, written = before[-1]
    if obs == V.ANS:
        return "copy"
    if obs == V.BOS:
        return "seek"
    if written:
        return "parity" if CHAR_OF[written[0]] in "+-" and obs == CHAR[")"] else "copy"
    closes = [w for o, _, w in before if o == CHAR[")"]]
    if closes:
        return "parity" if closes[-1] else "seek"
    return "seek" if any(o in (CHAR["+"], CHAR["-"]) for o, _, _ in before) else "parity"


def next_tokens(window) -> list[int]:
    """What the model emits after the read that ends `window`: its writes, then its next command
    and read, or [EOS]."""
    reads = events(window)
    obs, command, _ = reads[-1]
    c = CHAR_OF.get(obs)
    step = [RT, RD]
    written = [CHAR_OF[t] for _, _, w in reads[:-1] for t in w if t in CHAR_OF]
    if command == LT:  # walking back to [BOS], writing the disks smallest first
        if obs == V.BOS:
            return [CHAR["$"], *step]
        if c == "(":
            latest_first = [CHAR_OF[o] for o, _, _ in reads[:-1]][::-1]  # the digits, then the ')'
            label = "".join(latest_first[:latest_first.index(")")])
            last = [ch for ch in written if ch in "+-"][-1]  # the smallest disk's, or the entry before's
            direction = last if "A" not in written else "+-"[last == "+"]
            return [CHAR[ch] for ch in f"({label}){direction}A"] + [LT, RD]
        return [LT, RD]
    where = phase(reads)
    if where == "seek":
        return step
    if where == "parity":
        parities = [ch for o, _, w in reads[:-1] for ch in map(CHAR_OF.get, w) if o == CHAR[")"]]
        if c == ")":
            return [CHAR["+" if parities and parities[-1] == "-" else "-"], *step]
        if c == "=":
            return [V.ANS, LT, RD]
        return step
    rods = [ch for ch in written if ch in "ABCabc"]
    since_state = written[len(written) - written[::-1].index("$"):] if "$" in written else written
    if c in "ABCabc":
        cycle = CYCLE[CHAR_OF[reads[-2][0]]]  # the direction, read just before
        next_rod = cycle[(cycle.index(c.upper()) + 1) % 3].lower()
        if not any(ch in "ABCabc" for ch in since_state):  # the first entry: the smallest disk
            new = next_rod if c.isupper() else c.upper()
        elif rods[-1].islower():
            new = c.lower()
        elif c.upper() == rods[-1]:
            new = rods[-1]
        else:
            new = next_rod
        return [CHAR[new], *step]
    if c == "$":
        return [CHAR["$"], *(step if rods[-1].islower() else [V.EOS])]
    return [obs, *step]


def play(stream) -> None:
    """Checks that next_tokens, from the window before each read's answer, gives exactly the model
    tokens that follow it, and that these are all the model tokens of the episode."""
    j = next(i for i, (t, forced) in enumerate(stream) if not forced)
    assert [t for t, _ in stream[j:j + 2]] == [RT, RD]
    j += 2
    while True:
        assert stream[j][1], j  # a read's answer
        expected = next_tokens(stream[max(0, j + 1 - WINDOW):j + 1])
        got = [t for t, _ in stream[j + 1:j + 1 + len(expected)]]
        assert got == expected, (j, V.decode(got), V.decode(expected))
        assert not any(forced for _, forced in stream[j + 1:j + 1 + len(expected)])
        j += 1 + len(expected)
        if expected[-1] == V.EOS:
            assert j == len(stream)
            return


def oracle_stream(task, x):
    """The episode as (token, forced) pairs: the prompt, then the oracle's script."""
    return [(t, True) for t in task.prompt(x)] + [(t % FORCED, t >= FORCED) for t in task.script(x)]


@pytest.mark.parametrize("sizes", [[1, 2, 3, 4, 5, 6, 7, 8], [10]])
def test_local_trajectory_follows_from_a_short_window(sizes, rng):
    task = get_task("hanoi", variant="iterative", trajectory="local")
    for n in sizes:
        play(oracle_stream(task, task.sample(rng, n)))


def test_local_trajectory_with_long_and_short_labels():
    """Three-digit and one-digit labels side by side (the reversed copy at the walk back, entries of
    different lengths in the window)."""
    task = get_task("hanoi", variant="iterative", trajectory="local")
    for sizes in ((100, 99, 7, 1), (100,), (9, 8, 7, 6, 5), (100, 10, 1)):
        play(oracle_stream(task, Disks(sizes)))


def test_local_states_are_legal_moves_of_the_smallest_disk_and_the_other_one():
    """Each state differs from the one before by one disk, moved onto a larger one or an empty rod;
    the smallest disk moves every other time; the moved disk and every larger one are lower case."""
    task = get_task("hanoi", variant="iterative", trajectory="local")
    n = 6
    x = Disks(tuple(range(60, 60 - 10 * n, -10)))
    text = V.decode(task.answer(x), readable=False)
    states = [s for s in text.split("$") if s]
    assert len(states) == (1 << n) + 1 and text.endswith("$")
    parse = lambda s: [(e.split(")")[0], e[-1]) for e in s[1:].split("(")]  # noqa: E731
    for k, (old, new) in enumerate(zip(states, states[1:-1])):
        a, b = parse(old), parse(new)
        changed = [i for i, ((_, r), (_, q)) in enumerate(zip(a, b)) if r.upper() != q.upper()]
        assert len(changed) == 1
        i = changed[0]
        assert (i == 0) == (k % 2 == 0)
        assert all(q.isupper() for _, q in b[:i]) and all(q.islower() for _, q in b[i:])
        assert all(q.upper() != b[i][1].upper() for _, q in b[:i])  # a smaller disk is not on the target
        assert all(r.upper() != a[i][1].upper() for _, r in a[:i])  # nor on top of the moved one
    assert states[-1] == "".join(f"({d}){'+-'[i % 2]}C" for i, d in enumerate(reversed(x.sizes)))  # n = 6


def test_trajectory_option():
    assert get_task("hanoi").trajectory == "local"
    with pytest.raises(ValueError, match="trajectory of the iterative variant must be one of"):
        get_task("hanoi", trajectory="moves")
    with pytest.raises(ValueError, match="trajectory of the recursive variant"):
        get_task("hanoi", variant="recursive", trajectory="carried")
    x = Disks((7, 5, 2))
    carried = V.decode(get_task("hanoi", trajectory="carried").answer(x), readable=False)
    assert carried.startswith("(2)ACO") and "(2)c" not in carried
    assert V.decode(get_task("hanoi").answer(x), readable=False).startswith("(2)-A(5)+A(7)-A$(2)-c(5)+a(7)-a$")
