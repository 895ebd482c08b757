"""Task generators, oracles and checkers: every oracle runs through the real loop (replay) and is
checked against an answer computed independently (Python integers, exec of the circuit's code, a
recursive Hanoi solver); the trajectories match digests recorded from the plain oracles."""
import hashlib
import re
import sys
from decimal import Decimal, localcontext
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from ssm_tools import vocab as V
from ssm_tools.config import load_config, make_eval_task, make_task, shipped_configs, validate
from ssm_tools.tasks import TASKS, get_task
from ssm_tools.tasks.arithmetic import Operands
from ssm_tools.tasks.base import FORCED, expected_stream, output_stream
from ssm_tools.tasks.hanoi import Hanoi

ROOT = Path(__file__).resolve().parents[1]

# (name, mode, options): every task and mode of this package (coding is tested on its own).
CASES = [("addition", m, {}) for m in ("interactive", "cot", "single_turn", "direct", "direct_reversed")]
CASES += [("multiplication", m, {"second_digits": k}) for m in ("interactive", "cot", "single_turn") for k in (1, 2)]
CASES += [("mixture", "interactive", {"add_weight": 0.5})]
CASES += [("hanoi", m, {"variant": "iterative", "trajectory": t}) for m in ("interactive", "cot", "single_turn")
          for t in ("local", "carried")]
CASES += [("hanoi", m, {"variant": "recursive"}) for m in ("interactive", "cot", "single_turn")]
CASES += [("logical_graph", m, {"trajectory": t}) for m in ("interactive", "cot", "single_turn")
          for t in ("local", "carried", "linked", "phrase")]
CASES += [("logical_graph", "interactive", {"labels": 100, "trajectory": t})
          for t in ("local", "carried", "linked", "phrase", "phrase_back")]
CASES += [("logical_graph", "interactive", {"labels": 100, "trajectory": t, "shared": 0.7})
          for t in ("linked", "phrase", "phrase_back")]
CASES += [("logical_graph", m, {"labels": 100, "trajectory": "answered", "shared": s})
          for m in ("interactive", "cot", "single_turn") for s in (0.0, 0.7)]


def token_accuracy(task, inst, tokens, mask=None) -> float:
    """Fraction of answer positions the output stream gets right (a missing or extra output token
    counts as wrong)."""
    outputs, _ = output_stream(tokens, mask)
    answer = task.answer(inst)
    return sum(o == a for o, a in zip(outputs, answer)) / max(len(answer), len(outputs), 1)


def case_id(case):
    name, mode, options = case
    return "-".join([name, mode, *map(str, options.values())])


def independent_answer(task, x) -> str:
    """The answer text computed without the task's own code paths."""
    if task.name in ("addition", "multiplication", "mixture"):
        # Decimal arithmetic, exact at this precision: no int/str conversion limit at 10,000 digits.
        with localcontext(prec=len(x.a) + len(x.b) + 2):
            a, b = Decimal(x.a), Decimal(x.b)
            result = str(a + b if x.op == "+" else a * b)
        return result[::-1] if task.mode == "direct_reversed" else result
    if task.name == "logical_graph":
        printed = []
        exec(x.code(), {"print": printed.append})  # the prompt is valid Python; run it
        return str(printed[0])
    return hanoi_reference(task, x.sizes)


def hanoi_moves(n_disks: int, sizes, src="A", dst="C", via="B"):
    """Direct recursive solver: the moves of the n smallest disks (labels from `sizes`)."""
    if n_disks == 0:
        return []
    disk = sizes[len(sizes) - n_disks]
    return hanoi_moves(n_disks - 1, sizes, src, via, dst) + [(disk, src, dst)] + hanoi_moves(n_disks - 1, sizes, via, dst, src)


def hanoi_reference(task, sizes) -> str:
    fmt = lambda moves: "".join(f"({d}){s}{t}" for d, s, t in moves)  # noqa: E731
    if task.variant == "recursive":
        return "#" + "#".join(fmt(hanoi_moves(k, sizes[len(sizes) - k:])) for k in range(1, len(sizes) + 1))
    if task.trajectory == "local":
        return hanoi_local_reference(sizes)
    rods = {"A": list(sizes), "B": [], "C": []}
    out, flag = [], "o" if len(sizes) % 2 else "e"
    for d, s, t in hanoi_moves(len(sizes), sizes):
        assert rods[s][-1] == d and (not rods[t] or rods[t][-1] > d)  # a legal move
        rods[t].append(rods[s].pop())
        flag = flag.swapcase()
        out.append(f"({d}){s}{t}{flag}" + "".join(r + "".join(f"({v})" for v in rods[r]) for r in "ABC") + "$")
    assert rods["C"] == list(sizes)
    return "".join(out)


def hanoi_local_reference(sizes) -> str:
    """The local format's states (ssm_tools/tasks/hanoi.py) from the recursive solver's moves: every
    disk's direction ('-' for the largest, alternating) and rod, smallest disk first; the moved disk
    and every larger one lower case; then the last state again, upper case."""
    rod_of = {d: "A" for d in sizes}
    direction = {d: "-+"[i % 2] for i, d in enumerate(sizes)}
    state = lambda lower_from: "".join(  # noqa: E731
        f"({d}){direction[d]}{rod_of[d].lower() if d >= lower_from else rod_of[d]}" for d in reversed(sizes)) + "$"
    out = [state(max(sizes) + 1)]
    for d, s, t in hanoi_moves(len(sizes), sizes):
        assert rod_of[d] == s and all(rod_of[e] not in (s, t) for e in sizes if e < d)  # a legal move
        rod_of[d] = t
        out.append(state(d))
    assert set(rod_of.values()) == {"C"}
    return "".join(out) + state(max(sizes) + 1)


def check_transcript(task, transcript, insts, sizes):
    for i, (x, size) in enumerate(zip(insts, sizes)):
        tokens, mask = transcript.episode(i)
        script = task.script(x)
        prompt = task.prompt(x)
        # The loop produced exactly the stream the oracle expected, forced where it expected.
        assert tokens == prompt + expected_stream(script)
        assert mask == [False] * len(prompt) + [t < FORCED for t in script]
        assert bool(transcript.done[i]) and tokens[-1] == V.EOS
        assert V.ERR not in tokens  # no command the tools rejected
        assert len(tokens) <= task.max_steps(size)
        assert task.grade(x, tokens, mask) and task.grade(x, tokens)
        assert token_accuracy(task, x, tokens, mask) == 1.0
        assert V.decode(task.answer(x), readable=False) == independent_answer(task, x)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_oracle_through_real_loop_small_sizes(case, rng):
    name, mode, options = case
    task = get_task(name, mode, **options)
    sizes = [1, 2, 3, 4, 6] if name == "hanoi" else [1, 1, 2, 3, 5, 8, 13]
    for train in (False, True):
        transcript, insts = task.trajectories(rng, sizes, train=train)
        check_transcript(task, transcript, insts, sizes)


@pytest.mark.parametrize("name,mode,options,size", [
    ("addition", "interactive", {}, 1000),
    ("multiplication", "interactive", {"second_digits": 1}, 1000),
    ("multiplication", "interactive", {"second_digits": 2}, 1000),
    ("logical_graph", "interactive", {"trajectory": "local"}, 1000),
    ("logical_graph", "single_turn", {"trajectory": "local"}, 1000),
    ("logical_graph", "interactive", {"trajectory": "carried"}, 1000),
    ("logical_graph", "single_turn", {"trajectory": "carried"}, 1000),
    ("logical_graph", "interactive", {"trajectory": "linked"}, 1000),
    ("logical_graph", "interactive", {"trajectory": "phrase"}, 1000),
    ("logical_graph", "single_turn", {"trajectory": "phrase"}, 1000),
    ("logical_graph", "interactive", {"trajectory": "phrase_back"}, 1000),
    ("logical_graph", "interactive", {"trajectory": "answered"}, 1000),
    ("logical_graph", "single_turn", {"trajectory": "answered"}, 1000),
    ("hanoi", "interactive", {"variant": "iterative", "trajectory": "local"}, 14),  # 16,383 moves, ~4.5M tokens
    ("hanoi", "interactive", {"variant": "iterative", "trajectory": "carried"}, 14),  # ~5M tokens
    ("hanoi", "interactive", {"variant": "recursive"}, 11),  # 2 copies of 2^k-move lists per k: 11 disks for time
    ("hanoi", "single_turn", {"variant": "iterative", "trajectory": "local"}, 12),  # the paper's largest test size
    ("hanoi", "single_turn", {"variant": "iterative", "trajectory": "carried"}, 12),  # (~230k tokens)
    ("hanoi", "single_turn", {"variant": "recursive"}, 11),
], ids=lambda v: str(v))
def test_oracle_through_real_loop_large_sizes(name, mode, options, size, rng):
    task = get_task(name, mode, **options)
    transcript, insts = task.trajectories(rng, [size])
    check_transcript(task, transcript, insts, [size])


@pytest.mark.parametrize("name,options", [("addition", {}), ("multiplication", {"second_digits": 1}),
                                          ("multiplication", {"second_digits": 2})])
def test_arithmetic_past_pythons_int_str_limit(name, options, rng):
    """10,000-digit operands (Python's int/str conversion stops at 4,300 digits by default): the
    oracle played through the C++ tools is exactly the script, and its answer is the Decimal one.
    The process-wide limit is left as it was."""
    limit = sys.get_int_max_str_digits()
    task = get_task(name, **options)
    transcript, insts = task.trajectories(rng, [10_000])
    check_transcript(task, transcript, insts, [10_000])
    assert len(insts[0].a) == 10_000 and len(task.answer(insts[0])) >= 10_000
    assert sys.get_int_max_str_digits() == limit


# sha256 (first 16 hex digits) of the trajectories (tokens, loss mask, lengths, done) of each case from
# fixed seeds, recorded from the per-token oracles before they were rewritten with bytes joins for
# speed (single_turn of hanoi/logical_graph: when it was added). Fixed seeds: a NumPy release that
# changes Generator streams would change the draws, not the oracles.
DIGESTS = {
    "addition-interactive": "576c946ea0a8ed17", "addition-cot": "085d1ef00742c6b2",
    "addition-single_turn": "f7ee21608e54b88e", "addition-direct": "6866a9fa785d2c90",
    "addition-direct_reversed": "a0e8f32c49c326f8",
    "multiplication-interactive-1": "aa00376c5a41feee", "multiplication-interactive-2": "d043732b5631b097",
    "multiplication-cot-1": "c0211f92725b0177", "multiplication-cot-2": "e80e45adf63dc083",
    "multiplication-single_turn-1": "18c78fa927feb481", "multiplication-single_turn-2": "ae4f4064514a08da",
    "mixture-interactive-0.5": "55765404d6c36760",
    "hanoi-interactive-iterative-carried": "0271477696153c8f", "hanoi-interactive-recursive": "a8bb70225fae5376",
    "hanoi-cot-iterative-carried": "b8378d15744e1671", "hanoi-cot-recursive": "de8b5f63098181ec",
    "hanoi-single_turn-iterative-carried": "e22a9ba0b1bd8adb", "hanoi-single_turn-recursive": "121800bc00b6cfc4",
    "logical_graph-interactive-carried": "e26c8d84e630baac", "logical_graph-cot-carried": "19e17eda69d52a74",
    "logical_graph-single_turn-carried": "23450d8a36d7eed5",
    # Recorded when the option was added (the same oracle, with labels below 100).
    "logical_graph-interactive-100-carried": "013236357cf2b430",
    # Recorded when the local trajectory was added.
    "logical_graph-interactive-local": "fd895a704e22e458", "logical_graph-cot-local": "e7c299654b93f457",
    "logical_graph-single_turn-local": "ddc15704a56cdd93", "logical_graph-interactive-100-local": "d8c20c7480f714f2",
    # Recorded when Hanoi's local iterative trajectory was added.
    "hanoi-interactive-iterative-local": "d2062159c43fa195", "hanoi-cot-iterative-local": "3874ffd064ce8891",
    "hanoi-single_turn-iterative-local": "d2a688d0d1b8c4ae",
    # Recorded when the linked trajectory was added.
    "logical_graph-interactive-linked": "fd3dd9bef3351883", "logical_graph-cot-linked": "42c149f6fb0f549b",
    "logical_graph-single_turn-linked": "68c42f968fe967eb", "logical_graph-interactive-100-linked": "26e9996db412cf06",
    "logical_graph-interactive-100-linked-0.7": "5b6199c2e1e284a8",
    # Recorded when the phrase trajectory was added.
    "logical_graph-interactive-phrase": "1d57412fb5dc8cff", "logical_graph-cot-phrase": "97fd9342dea27d16",
    "logical_graph-single_turn-phrase": "4a9527ed64ff1830", "logical_graph-interactive-100-phrase": "952293f6a20e9b45",
    "logical_graph-interactive-100-phrase-0.7": "abe320c8f79c2d6d",
    "logical_graph-interactive-100-phrase_back": "0a04741149d855bb",
    "logical_graph-interactive-100-phrase_back-0.7": "bc85b867b46c7385",
    # Recorded when the answered trajectory was added.
    "logical_graph-interactive-100-answered-0.0": "fc196e17eabe7cba",
    "logical_graph-interactive-100-answered-0.7": "2928da33c5814249",
    "logical_graph-cot-100-answered-0.0": "b91376e4d0fd15b8", "logical_graph-cot-100-answered-0.7": "566db05d76094bf8",
    "logical_graph-single_turn-100-answered-0.0": "3a346074c5fea97a",
    "logical_graph-single_turn-100-answered-0.7": "4fc75e577e4aedfe",
}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_trajectories_match_recorded_digests(case):
    name, mode, options = case
    task = get_task(name, mode, **options)
    sizes = [1, 2, 3, 4, 6] if name == "hanoi" else [1, 1, 2, 3, 5, 8, 13, 20, 40]
    digest = hashlib.sha256()
    for seed, train in ((0, False), (1, True)):
        t, _ = task.trajectories(np.random.default_rng(seed), sizes, train=train)
        for array in (t.tokens.long(), t.loss_mask, t.lengths.long(), t.done):
            digest.update(array.numpy().tobytes())
    assert digest.hexdigest()[:16] == DIGESTS[case_id(case)]


def test_addition_carry_chains_match_recorded_digest():
    """Scripts of carries rippling through every column, zeros and uneven lengths (digest recorded
    from the per-token oracle)."""
    task, digest = get_task("addition"), hashlib.sha256()
    for k in (1, 2, 7, 29):
        nines = "9" * k
        for a, b in ((nines, "1"), ("1", nines), (nines, nines), ("0", nines), ("5" * k, "5" * k), ("0", "0")):
            digest.update(bytes(task.script(Operands(a, "+", b))) + b"\xff")
    assert digest.hexdigest()[:16] == "a5703820792b9d68"


@pytest.mark.parametrize("name,options", [("hanoi", {"variant": "iterative", "trajectory": "local"}),
                                          ("hanoi", {"variant": "iterative", "trajectory": "carried"}),
                                          ("hanoi", {"variant": "recursive"}),
                                          ("logical_graph", {"trajectory": "local"}),
                                          ("logical_graph", {"trajectory": "carried"}),
                                          ("logical_graph", {"trajectory": "linked"}),
                                          ("logical_graph", {"trajectory": "phrase"})])
def test_single_turn_uses_the_tool_only_before_the_first_thought(name, options, rng):
    """One turn: tool use, then the model alone (no command, call or tool answer after its first
    thought), and the turn is the interactive policy's own first turn."""
    task, interactive, r = get_task(name, "single_turn", **options), get_task(name, **options), rng
    for size in (1, 2, 5):
        x = task.sample(r, size)
        script = task.script(x)
        tools, in_call = [], False  # per token: a command, call text or tool answer
        for t in script:
            in_call = (in_call or t == V.CALL) and t != V.CALL_END
            tools.append(in_call or t == V.CALL_END or V.is_pointer_cmd(t) or t >= FORCED)
        first_thought = tools.index(False)
        assert first_thought > 0 and not any(tools[first_thought:])
        assert script[:first_thought] == interactive.script(x)[:first_thought]
        assert task.tools() == interactive.tools()


def test_mixture_draws_both_operations_by_weight(rng):
    r = rng
    ops = [get_task("mixture", add_weight=0.3).sample(r, 4).op for _ in range(2000)]
    assert abs(ops.count("+") / len(ops) - 0.3) < 0.05
    assert {get_task("mixture", add_weight=w).sample(r, 4).op for _ in range(50) for w in [0.0]} == {"*"}


@pytest.mark.parametrize("name,options,k", [("addition", {}, 9), ("multiplication", {"second_digits": 2}, 12)])
def test_arithmetic_decisions_are_local(name, options, k, rng):
    """Learnability: every model token is a function of the last k tokens of the stream (across many
    instances and lengths, the same context never precedes two different model tokens)."""
    task = get_task(name, **options)
    r = rng
    seen = defaultdict(set)
    for size in [1, 2, 3, 5, 9, 17] * 20:
        x = task.sample_train(r, size)
        stream = task.prompt(x) + task.script(x)
        for j, t in enumerate(stream):
            if j >= len(task.prompt(x)) and t < FORCED:
                seen[tuple(u % FORCED for u in stream[max(0, j - k):j])].add(t)
    ambiguous = {ctx: nxt for ctx, nxt in seen.items() if len(nxt) > 1}
    assert not ambiguous, list(ambiguous.items())[:3]


def test_addition_train_and_test_distributions(rng):
    task, r = get_task("addition"), rng
    x = task.sample(r, 7)
    assert len(x.a) == len(x.b) == 7 and x.a[0] != "0" and x.b[0] != "0"
    lengths = {(len(y.a), len(y.b)) for y in (task.sample_train(r, 5) for _ in range(500))}
    assert lengths == {(i, j) for i in range(1, 6) for j in range(1, 6)}


@pytest.mark.parametrize("name,options", [("addition", {}), ("multiplication", {"second_digits": 1}),
                                          ("multiplication", {"second_digits": 2})])
def test_stress_operands_are_what_they_say_and_the_oracle_plays_them(name, options, rng):
    """Carry-heavy and zero-run test operands: n digits, no leading zero, a carry at every column
    (addition: a + b = 10^n) or long zero runs; the oracle exact on them through the real loop;
    training draws uniform operands whatever the option."""
    sizes = [1, 2, 3, 7, 40, 300]
    for kind in ("carries", "zero_runs"):
        task = get_task(name, **options, operands=kind)
        assert f"operands='{kind}'" in repr(task)
        transcript, insts = task.trajectories(rng, sizes)
        check_transcript(task, transcript, insts, sizes)
        for x, n in zip(insts, sizes):
            assert len(x.a) == n and x.a[0] != "0" and x.b[0] != "0" and len(x.b) == (n if name == "addition" else
                                                                                     options["second_digits"])
            if kind == "carries" and name == "addition":
                assert int(x.a) + int(x.b) == 10 ** n
            elif kind == "carries":
                assert set(x.a) <= set("56789") and set(x.b) <= set("789")
        many = "".join(task.sample(rng, 40).a for _ in range(50)) if kind == "zero_runs" else ""
        assert kind != "zero_runs" or (many.count("0") > 0.4 * len(many) and many.count("0" * 8) >= 25)
        train = [task.sample_train(rng, 5) for _ in range(300)]
        assert sum(x.a.count("0") for x in train) < 0.2 * sum(len(x.a) for x in train)
    assert "operands" not in repr(get_task(name, **options))


def test_hanoi_disks_drawn_without_replacement_largest_first(rng):
    x = get_task("hanoi").sample(rng, 30)
    assert len(set(x.sizes)) == 30 and list(x.sizes) == sorted(x.sizes, reverse=True)
    assert all(1 <= d <= 100 for d in x.sizes)


def test_tool_bounds_respected(rng):
    """Oracles only use the pointers their tools have, and stay within memory and answer bounds."""
    r = rng
    for name, mode, options in CASES:
        task = get_task(name, mode, **options)
        specs = task.tools()
        pointers = max([s.options.get("num_pointers", 0) for s in specs], default=0)
        for size in (1, 4, 9):
            x = task.sample(r, size)
            model = task.oracle(x)
            used = {(t - V.pointer_cmd(0, "read")) // 4 for t in model if V.is_pointer_cmd(t)}
            assert all(p < pointers for p in used), (name, used, pointers)
            if mode == "cot" or mode == "direct":
                assert not any(V.is_pointer_cmd(t) or t == V.CALL for t in model)
            script = task.script(x)
            for spec in specs:  # answers and memory within the configured bounds
                if "max_cells" in spec.options:
                    assert len(task.prompt(x)) + sum(t < FORCED and not V.is_pointer_cmd(t) for t in script) \
                        <= spec.options["max_cells"]
                if "max_response_tokens" in spec.options:
                    assert max(map(len, V.decode(expected_stream(script)).split("[RESULT]"))) \
                        <= spec.options["max_response_tokens"] + 16


def test_grade_rejects_wrong_or_unfinished_outputs(rng):
    task, r = get_task("addition"), rng
    transcript, (x,) = task.trajectories(r, [6])
    tokens, mask = transcript.episode(0)
    digits = set(V.encode("0123456789"))
    last_output = max(j for j, (t, m) in enumerate(zip(tokens, mask)) if m and t in digits)
    wrong = list(tokens)
    wrong[last_output] = V.encode(str((int(V.token_name(tokens[last_output])) + 1) % 10))[0]
    assert not task.grade(x, wrong, mask)
    assert token_accuracy(task, x, wrong, mask) == pytest.approx(1 - 1 / len(task.answer(x)))
    assert not task.grade(x, tokens[:-1], mask[:-1])  # no [EOS]
    dropped = [t for j, t in enumerate(tokens) if j != last_output]
    assert not task.grade(x, dropped, [m for j, m in enumerate(mask) if j != last_output])  # a digit missing


def test_seeding_is_reproducible(rng):
    for name, mode, options in CASES:
        task = get_task(name, mode, **options)
        seed = int(rng.integers(1 << 30))
        t1, x1 = task.trajectories(np.random.default_rng(seed), [3, 4])
        t2, x2 = task.trajectories(np.random.default_rng(seed), [3, 4])
        assert x1 == x2 and t1.tokens.equal(t2.tokens)
    draws = {get_task("logical_graph").sample(np.random.default_rng(s), 5) for s in range(5)}
    assert len(draws) == 5


@pytest.mark.parametrize("call,match", [
    (lambda rng: get_task("division"), "task name must be one of"),
    (lambda rng: get_task("addition", mode="tree"), r"mode must be one of \('interactive'"),
    (lambda rng: get_task("hanoi", mode="direct"), "mode must be one of"),
    (lambda rng: get_task("addition", digits=3), "bad option"),
    (lambda rng: get_task("multiplication", second_digits=3), "second_digits must be 1 or 2"),
    (lambda rng: get_task("hanoi", variant="fast"), r"variant must be one of \('iterative', 'recursive'\)"),
    (lambda rng: get_task("mixture", add_weight=1.5), r"add_weight must be a number in \[0, 1\]"),
    (lambda rng: get_task("addition", operands="nines"), "addition: operands must be one of uniform, carries, "
                                                        "zero_runs, got 'nines'"),
    (lambda rng: get_task("multiplication", operands=1), "multiplication: operands must be one of"),
    (lambda rng: get_task("addition").sample(rng, 0), r"size \(digits\) must be an integer >= 1"),
    (lambda rng: get_task("addition").sample(rng, 2.5), r"size \(digits\) must be an integer"),
    (lambda rng: get_task("addition").sample(rng, True), r"size \(digits\) must be an integer"),
    (lambda rng: get_task("hanoi").sample(rng, 101), r"size \(disks\) must be <= 100"),
    (lambda rng: get_task("logical_graph").sample_train(rng, -3), r"max_size \(gates\) must be an integer >= 1"),
    (lambda rng: get_task("logical_graph", labels=3), r"labels must be an integer > 3"),
    (lambda rng: get_task("logical_graph", trajectory="dfs"),
     r"trajectory must be one of \['answered', 'carried', 'linked', 'local', 'phrase', 'phrase_back'\]"),
    (lambda rng: get_task("logical_graph", shared=1.5), r"shared must be a number in \[0, 1\]"),
    (lambda rng: get_task("logical_graph", labels=100).sample(rng, 98), r"size \(gates\) must be <= 97 with 100 labels"),
    (lambda rng: get_task("multiplication").max_steps(0), r"size \(digits\)"),
])
def test_bad_input_raises_naming_the_field(call, match, rng):
    with pytest.raises(ValueError, match=match):
        call(rng)


def test_every_config_ships_with_the_package_and_builds_its_task():
    files = sorted(ROOT.glob("tasks/*.toml"))
    assert len(files) >= 10 and shipped_configs() == sorted(f.stem for f in files)
    for f in files:
        config = load_config(f.stem)  # the shipped copy, by name
        assert config == load_config(f)
        task = make_task(config)
        assert task.name in TASKS and config["sizes"]["train"][0] <= config["sizes"]["train"][1]


def test_a_config_is_a_path_or_a_shipped_name(tmp_path):
    (tmp_path / "addition.toml").write_text('[task]\nname = "hanoi"\n[sizes]\ntrain = [1, 7]\ntest = [8]\n')
    assert load_config("addition.toml")["task"]["name"] == "hanoi"  # a file in the working folder comes first
    assert load_config("addition")["task"]["name"] == "addition"
    with pytest.raises(FileNotFoundError, match="no config file 'tasks/sorting.toml'.*shipped: addition, "):
        load_config("tasks/sorting.toml")


GOOD = {"task": {"name": "addition"}, "sizes": {"train": [1, 5], "test": [10]}, "model": {"d_model": 64}}


def test_the_graded_task_is_eval_task_else_task():
    mixture = load_config("mixture_add0.33")
    assert repr(make_task(mixture)) == "Mixture(mode='interactive', add_weight=0.33)"
    assert repr(make_eval_task(mixture)) == "Multiplication(mode='interactive', second_digits=2)"
    assert repr(make_eval_task(validate(GOOD))) == "Addition(mode='interactive')"
    with pytest.raises(ValueError, match=r"\[eval\] task must be a table with name"):
        validate({**GOOD, "eval": {"task": {"name": "sorting"}}})
    with pytest.raises(ValueError, match=r"\[eval\] task: multiplication: second_digits must be 1 or 2"):
        validate({**GOOD, "eval": {"task": {"name": "multiplication", "options": {"second_digits": 3}}}})


@pytest.mark.parametrize("change,match", [
    ({"task": None}, r"missing section \[task\]"),
    ({"task": {"name": "addition", "digits": 3}}, r"\[task\] has unknown keys \['digits'\]"),
    ({"task": {"name": "sorting"}}, r"\[task\] name must be one of"),
    ({"task": {"name": "addition", "mode": "fast"}}, r"\[task\] addition: mode must be one of"),
    ({"task": {"name": "hanoi", "options": {"variant": 2}}}, r"\[task\] hanoi: variant must be one of"),
    ({"task": {"name": "addition", "options": 3}}, r"\[task\] options must be a table"),
    ({"sizes": {"train": [5, 1], "test": [10]}}, r"\[sizes\] train must be \[min, max\]"),
    ({"sizes": {"train": [0, 5], "test": [10]}}, r"\[sizes\] train must be \[min, max\] with 1 <= min"),
    ({"sizes": {"train": [1, 5], "test": []}}, r"\[sizes\] test must be a non-empty list"),
    ({"sizes": {"train": [1, 5], "test": [10, "x"]}}, r"\[sizes\] test must be a non-empty list of integers"),
    ({"sizes": {"train": [1, 5], "test": [3], "eval": [4]}}, r"\[sizes\] has unknown keys \['eval'\]"),
])
def test_malformed_config_raises_naming_the_field(change, match):
    config = {**GOOD, **change}
    config = {k: v for k, v in config.items() if v is not None}
    with pytest.raises(ValueError, match=match):
        validate(config, "exp.toml")


def test_config_passes_other_sections_through(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('[task]\nname = "hanoi"\noptions = { variant = "recursive" }\n'
                    '[sizes]\ntrain = [1, 7]\ntest = [8]\n[model]\nd_model = 64\n[train]\nlr = 1e-3\n')
    config = load_config(path)
    assert config["model"] == {"d_model": 64} and config["train"] == {"lr": 1e-3}
    assert config["task"] == {"name": "hanoi", "mode": "interactive", "options": {"variant": "recursive"}}
    path.write_text("[task\nname=")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(path)


def test_show_prints_a_readable_trajectory(capsys):
    from ssm_tools.tasks.__main__ import main

    main(["show", "addition", "--size", "3", "--seed", "1"])
    out = capsys.readouterr().out
    assert out.startswith("«[BOS]") and "[p1.read]«" in out and out.rstrip().endswith("forced)")
    n = int(re.search(r"size 3: (\d+) tokens", out).group(1))
    x = get_task("addition").sample(np.random.default_rng(1), 3)
    assert n == len(get_task("addition").prompt(x)) + len(get_task("addition").script(x))
    with pytest.raises(SystemExit):
        main(["show", "hanoi", "--size", "0"])
    assert "size (disks) must be an integer >= 1" in capsys.readouterr().err


def test_hanoi_iterative_rule_matches_recursive_solver():
    from ssm_tools.tasks.hanoi import solve_iterative

    for n in range(1, 12):
        sizes = list(range(n, 0, -1))  # label = rank: disk index d is label d + 1
        assert [(d + 1, s, t) for d, s, t in solve_iterative(n)] == hanoi_moves(n, sizes)
    assert isinstance(get_task("hanoi"), Hanoi)


def test_hanoi_local_iterative_exact_at_every_size_to_12(rng):
    """The local iterative oracle through the real loop at 1..12 disks (the paper's test range)."""
    task = get_task("hanoi", variant="iterative", trajectory="local")
    sizes = list(range(1, 13))
    transcript, insts = task.trajectories(rng, sizes)
    check_transcript(task, transcript, insts, sizes)
