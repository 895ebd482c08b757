"""The vocabulary and the protocol parser: encode/decode, a scripted episode checked token by token,
error answers, [EOS]/max_len handling, and the C++ parser against the plain-Python reference."""
import string

import numpy as np
import pytest

from ssm_tools.env import Env, ToolSpec, replay
from ssm_tools.reference import replay_reference
from ssm_tools.tools import Calculator, PointerMemory, SearchMemory, TapeMemory, Tool
from ssm_tools.vocab import (ANS, BLANK, BOS, CALL, CALL_END, EOS, ERR, NEWLINE, PAD, RESULT, RESULT_END,
                             VOCAB_SIZE, decode, encode, pointer_cmd, token_name)

P1_READ, P1_LEFT, P1_RIGHT = (pointer_cmd(0, op) for op in ("read", "left", "right"))
P2_READ, P2_RIGHT = pointer_cmd(1, "read"), pointer_cmd(1, "right")
TOOLS = [ToolSpec("pointer_memory", num_pointers=2), ToolSpec("search_memory"), ToolSpec("calculator")]


def run_one(prompt, script, tools=TOOLS, **env_kwargs):
    """(tokens, mask, done) of one replayed episode."""
    env = Env(tools, batch_size=1, **env_kwargs)
    transcript = replay(env, [prompt], [script])
    tokens, mask = transcript.episode(0)
    return tokens, mask, bool(transcript.done[0])


# ---------------------------------------------------------------- vocabulary

def test_decode_inverts_encode(rng):
    alphabet = string.printable[:95] + "\n"
    for _ in range(20):
        text = "".join(rng.choice(list(alphabet), size=int(rng.integers(0, 200))))
        tokens = encode(text)
        assert decode(tokens, readable=False) == text and decode(tokens) == text
        assert all(0 <= t < VOCAB_SIZE for t in tokens)


def test_readable_names_and_ids_follow_vocab_h():
    assert (PAD, BOS, EOS, ANS, ERR, BLANK, CALL, CALL_END, RESULT, RESULT_END) == tuple(range(10))
    assert pointer_cmd(0, "read") == 10 and pointer_cmd(1, "left") == 15 and pointer_cmd(3, "write") == 25
    assert decode([BOS, ANS, pointer_cmd(1, "left"), *encode("7"), EOS]) == "[BOS][ANS][p2.left]7[EOS]"
    assert token_name(VOCAB_SIZE + 3) == f"[?{VOCAB_SIZE + 3}]"


def test_vocab_rejects_bad_input():
    with pytest.raises(ValueError, match=r"text\[2\]"):
        encode("ab\u00e9")
    with pytest.raises(ValueError, match="tokens\\[1\\] = \\[ANS\\]"):
        decode([*encode("a"), ANS], readable=False)
    with pytest.raises(ValueError, match="pointer"):
        pointer_cmd(4, "read")
    with pytest.raises(ValueError, match="op"):
        pointer_cmd(0, "jump")


# ---------------------------------------------------------------- a scripted episode, token by token

def test_scripted_episode_token_by_token():
    prompt = encode("12+34=")
    script = [P1_READ, P1_RIGHT, P1_RIGHT, P1_READ, P2_RIGHT, *encode("c"), P2_READ, ANS, *encode("4"),
              CALL, *encode("add 12 34"), CALL_END, *encode("6"), EOS, *encode("ignored")]
    tokens, mask, done = run_one(prompt, script)
    # (token, generated) in consumption order: the prompt, then each generated token and its answer.
    expected = [(t, False) for t in prompt] + [
        (P1_READ, True), (encode("1")[0], False),
        (P1_RIGHT, True), (P1_RIGHT, True),
        (P1_READ, True), (encode("+")[0], False),
        (P2_RIGHT, True), (encode("c")[0], True),
        (P2_READ, True), (encode("2")[0], False),
        (ANS, True), (encode("4")[0], True),
        (CALL, True), *[(t, True) for t in encode("add 12 34")], (CALL_END, True),
        (RESULT, False), *[(t, False) for t in encode("46")], (RESULT_END, False),
        (encode("6")[0], True), (EOS, True)]
    assert list(zip(tokens, mask)) == expected and done


def test_memory_holds_prompt_and_thoughts_but_not_commands_or_answers():
    env = Env([ToolSpec("pointer_memory", num_pointers=1), ToolSpec("search_memory")], batch_size=1)
    script = [P1_READ, *encode("x\n"), CALL, *encode("find x"), CALL_END, ANS, *encode("y")]
    replay(env, [encode("ab\n")], [script])
    pointer_dump, search_dump = env.dump(0)
    assert pointer_dump.startswith("pointer_memory: 7 cells")  # a b \n x \n [ANS] y
    assert "2: [ANS]y" in search_dump


# ---------------------------------------------------------------- error answers

@pytest.mark.parametrize("script, answer", [
    ([CALL_END], [ERR]),                                # stray protocol tokens
    ([RESULT], [ERR]),
    ([BLANK], [ERR]),
    ([pointer_cmd(3, "read")], [ERR]),                  # a pointer the memory does not have
    ([P1_LEFT], [ERR]),                                 # left of cell 0
    ([pointer_cmd(0, "write"), encode("z")[0]], [ERR]),  # PointerMemory has no write
    ([CALL, *encode("frob 1"), CALL_END], [RESULT, ERR, *encode("unknown command: frob"), RESULT_END]),
    ([CALL, CALL_END], [RESULT, ERR, *encode("unknown command: "), RESULT_END]),
    ([CALL, *encode("add 1"), P1_READ], [RESULT, ERR, *encode("malformed call: [p1.read] inside [CALL]"),
                                         RESULT_END]),
    ([CALL, *encode("add 1 x"), CALL_END], [RESULT, ERR, *encode("usage: add <a> <b> (non-negative integers"
                                                                 " of at most 65536 digits)"), RESULT_END]),
])
def test_malformed_commands_get_error_answers(script, answer):
    prompt = encode("1+1=")
    tokens, mask, _ = run_one(prompt, script + [*encode("k"), EOS])
    generated = len(prompt) + len(script)
    assert tokens[generated:generated + len(answer)] == answer
    assert not any(mask[generated:generated + len(answer)])
    assert tokens[generated + len(answer):] == [*encode("k"), EOS]  # the episode goes on after an error


def test_overlong_call_is_cut_off_with_an_error():
    script = [CALL, *encode("add " + "1" * 30), *encode("more"), EOS]
    tokens, mask, done = run_one(encode("0"), script, max_call_tokens=8)
    cut = 1 + 1 + 9  # prompt, [CALL], 8 buffered characters, then the 9th character overflows
    answer = [RESULT, ERR, *encode("call too long (max 8 tokens)"), RESULT_END]
    assert tokens[cut:cut + len(answer)] == answer and not any(mask[cut:cut + len(answer)])
    assert done and tokens[-1] == EOS  # the rest of the call was read as thoughts, then [EOS]


def test_tape_write_consumes_its_symbol():
    write = pointer_cmd(0, "write")
    tokens, mask, _ = run_one(encode("ab"), [write, *encode("z"), P1_READ, write, ANS, P1_READ, EOS],
                              tools=[ToolSpec("tape_memory")])
    assert decode(tokens) == "ab[p1.write]z[p1.read]z[p1.write][ANS][ERR][p1.read]z[EOS]"
    assert mask == [False, False, True, True, True, False, True, True, False, True, False, True]


# ---------------------------------------------------------------- done handling

@pytest.mark.parametrize("before", [[], [CALL, *encode("add 1")], [pointer_cmd(0, "write")]])
def test_eos_ends_the_episode_in_any_state(before):
    tokens, mask, done = run_one(encode("7"), before + [EOS, *encode("after")], tools=[ToolSpec("tape_memory")])
    assert done and tokens == encode("7") + before + [EOS] and mask == [False] + [True] * (len(before) + 1)


def test_max_len_ends_the_episode_even_inside_an_answer():
    tokens, mask, done = run_one(encode("abc"), [CALL, *encode("add 1 2"), CALL_END, EOS], max_len=14)
    assert done and len(tokens) == 14 and tokens[-2:] == [RESULT, encode("3")[0]]


def test_script_running_out_leaves_the_episode_open():
    tokens, _, done = run_one(encode("abc"), [P1_READ])
    assert not done and tokens == encode("abc") + [P1_READ, encode("a")[0]]


# ---------------------------------------------------------------- C++ parser == Python reference

def random_script(rng, n):
    """Token streams biased to commands and calls, with every kind of malformed input."""
    pieces = []
    while len(pieces) < n:
        kind = rng.integers(6)
        if kind == 0:
            pieces.append(int(rng.integers(10, 26)))  # any pointer command
        elif kind == 1:
            word = ["find", "add", "frob"][int(rng.integers(3))]
            args = " ".join(str(rng.integers(1000)) for _ in range(rng.integers(0, 3)))
            body = encode(f"{word} {args}")[: int(rng.integers(0, 20))]
            pieces += [CALL, *body] + ([CALL_END] if rng.random() < 0.8 else [])
        elif kind == 2:
            pieces.append(int(rng.integers(0, VOCAB_SIZE)))  # anything, protocol tokens included
        else:
            pieces += encode("".join(rng.choice(list("ab12 =\n"), size=int(rng.integers(1, 5)))))
    return pieces[:n] + ([EOS] if rng.random() < 0.5 else [])


def make_reference_tools():
    return [PointerMemory(num_pointers=2), TapeMemory(num_pointers=1), SearchMemory(max_response_tokens=64),
            Calculator()]


def test_cpp_loop_matches_python_reference(rng):
    specs = [ToolSpec("pointer_memory", num_pointers=2), ToolSpec("tape_memory", num_pointers=1),
             ToolSpec("search_memory", max_response_tokens=64), ToolSpec("calculator")]
    batch = 64
    prompts = [encode("".join(rng.choice(list("0123456789+=\nab "), size=int(rng.integers(1, 30)))))
               for _ in range(batch)]
    scripts = [random_script(rng, int(rng.integers(0, 300))) for _ in range(batch)]
    limits = dict(max_len=int(rng.integers(50, 400)), max_call_tokens=12)
    got = replay(Env(specs, batch_size=batch, num_threads=2, **limits), prompts, scripts, seed=3)
    want = replay_reference(make_reference_tools, prompts, scripts, seed=3, **limits)
    for i in range(batch):
        assert got.episode(i) == want.episode(i), (i, got.text(i), want.text(i))
    assert got.done.tolist() == want.done.tolist() and got.lengths.tolist() == want.lengths.tolist()


def test_faulty_python_tool_answers_are_replaced_alike():
    class Faulty(Tool):
        """Answers every command with an id outside the vocabulary, or an overlong answer."""

        def __init__(self, overlong):
            super().__init__()
            self.overlong = overlong

        def name(self): return "faulty"
        def reset(self, seed): pass
        def accepts(self, command): return True
        def call(self, command): return [encode("x")[0]] * 100 if self.overlong else [VOCAB_SIZE]
        def dump(self): return "faulty"

    script = [P1_READ, CALL, *encode("anything"), CALL_END, EOS]
    for overlong in (False, True):
        limits = dict(max_answer_tokens=16)
        got = replay(Env([lambda: Faulty(overlong)], batch_size=1, **limits), [encode("a")], [script])
        want = replay_reference(lambda: [Faulty(overlong)], [encode("a")], [script], **limits)
        assert got.episode(0) == want.episode(0)
        assert got.text(0) == "a[p1.read][ERR][CALL]anything[/CALL][RESULT][ERR]invalid answer from tool faulty[/RESULT][EOS]"
