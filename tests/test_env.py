"""Env, rollout, replay and Transcript: the three ways to drive episodes agree token by token, the
Transcript format, Python tools in the loop, and precise errors for bad input."""
import numpy as np
import pytest
import torch

from ssm_tools.env import Env, ToolSpec, Transcript, replay, rollout
from ssm_tools.tools import PointerMemory, Tool
from ssm_tools.vocab import ANS, CALL, CALL_END, EOS, ERR, PAD, VOCAB_SIZE, encode, pointer_cmd

TOOLS = [ToolSpec("pointer_memory", num_pointers=2), ToolSpec("search_memory"), ToolSpec("calculator")]


def addition_episodes(rng, batch):
    """Prompts "a+b=" and scripts that walk pointers, read, think, call the calculator and answer."""
    prompts, scripts = [], []
    for _ in range(batch):
        a, b = (int(x) for x in rng.integers(0, 10 ** int(rng.integers(1, 8)), size=2))
        prompt = encode(f"{a}+{b}=")
        walk = [pointer_cmd(0, "right")] * len(str(a)) + [pointer_cmd(0, "read"), pointer_cmd(1, "left")]
        call = [CALL, *encode(f"add {a} {b}"), CALL_END]
        scripts.append(walk + encode("c1\n") + call + [ANS, *encode(str(a + b)), EOS])
        prompts.append(prompt)
    return prompts, scripts


def step_by_step(env, prompts, scripts, seed):
    """Drive env.step from Python with a scripted policy that only advances when its sample is used."""
    inputs = env.reset(prompts, seed)
    cursor = np.zeros(len(prompts), dtype=int)
    transcript = [[int(t)] for t in inputs]
    for _ in range(10_000):
        sampled = np.array([s[c] if c < len(s) else EOS for s, c in zip(scripts, cursor)])
        inputs, forced, done = env.step(sampled)
        for i in range(len(prompts)):
            if not forced[i] and inputs[i] != PAD:
                cursor[i] += 1
        if done.all():
            break
    return env.transcript()


class TeacherForcedModel:
    """model_step that replays a known transcript: at step j it answers column j + 1."""

    def __init__(self, transcript: Transcript):
        self.tokens, self.step = transcript.tokens, 0

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        assert inputs.dtype == torch.long and inputs.shape == (self.tokens.shape[0],)
        assert torch.equal(inputs, self.tokens[:, self.step]), "the loop fed the model something else"
        self.step += 1
        column = min(self.step, self.tokens.shape[1] - 1)
        return self.tokens[:, column]


def assert_same(a: Transcript, b: Transcript):
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.loss_mask, b.loss_mask)
    assert torch.equal(a.lengths, b.lengths) and torch.equal(a.done, b.done)


@pytest.mark.parametrize("num_threads", [1, 2])
def test_replay_equals_step_by_step_equals_rollout(rng, num_threads):
    batch = 37
    prompts, scripts = addition_episodes(rng, batch)
    env = Env(TOOLS, batch_size=batch, num_threads=num_threads)
    replayed = replay(env, prompts, scripts, seed=5)
    assert replayed.done.all()
    assert_same(step_by_step(env, prompts, scripts, seed=5), replayed)
    model = TeacherForcedModel(replayed)
    assert_same(rollout(model, env, prompts, max_steps=10_000, seed=5), replayed)
    assert model.step == replayed.tokens.shape[1] - 1  # one call per token after the first; then all done
    for i in range(batch):
        a, b = map(int, bytes(t - encode(" ")[0] + 32 for t in prompts[i]).decode()[:-1].split("+"))
        assert replayed.text(i).endswith(f"[RESULT]{a + b}[/RESULT][ANS]{a + b}[EOS]")


def test_transcript_format(rng):
    prompts, scripts = addition_episodes(rng, 4)
    scripts[2] = scripts[2][:3]  # runs out: not done
    t = replay(Env(TOOLS, batch_size=4), prompts, scripts)
    assert t.tokens.dtype == torch.long and t.loss_mask.dtype == torch.bool
    assert t.tokens.shape == t.loss_mask.shape == (4, int(t.lengths.max()))
    assert t.done.tolist() == [True, True, False, True]
    for i in range(4):
        n = int(t.lengths[i])
        assert (t.tokens[i, n:] == PAD).all() and not t.loss_mask[i, n:].any()
        tokens, mask = t.episode(i)
        assert tokens[: len(prompts[i])] == prompts[i] and not any(mask[: len(prompts[i])])
        assert [tok for tok, m in zip(tokens, mask) if m] == scripts[i]  # generated = the script


def test_done_episodes_emit_pad_and_stay_done():
    env = Env(TOOLS, batch_size=2, max_len=4)
    env.reset([encode("ab"), encode("xyz")])
    outputs = [env.step(np.array([EOS, ANS])) for _ in range(4)]
    assert [int(o[0][0]) for o in outputs] == [encode("b")[0], EOS, PAD, PAD]
    assert [bool(o[2][0]) for o in outputs] == [False, True, True, True]
    assert [int(o[0][1]) for o in outputs] == [*encode("yz"), ANS, PAD]  # max_len = 4 reached at [ANS]
    assert [bool(o[1][1]) for o in outputs] == [True, True, False, False]
    assert [bool(o[2][1]) for o in outputs] == [False, False, True, True]


def test_step_accepts_torch_and_numpy_of_any_int_dtype():
    env = Env(TOOLS, batch_size=2)
    env.reset([[ANS], [ANS]])
    for sampled in (torch.tensor([ANS, EOS]), np.array([ANS, ANS], dtype=np.uint8), [ANS, ANS]):
        next_tokens, forced, done = env.step(sampled)
        assert next_tokens.dtype == np.int32 and forced.dtype == bool and done.dtype == bool


class PyMemory(Tool):
    """A Python tool in the loop (Python subclasses get the same protocol, through the trampoline)."""

    def __init__(self):
        Tool.__init__(self)
        self.inner = PointerMemory(num_pointers=2)

    def name(self): return "py_memory"
    def reset(self, seed): self.inner.reset(seed)
    def observe(self, token): self.inner.observe(token)
    def accepts(self, command): return self.inner.accepts(command)
    def call(self, command): return self.inner.call(command)
    def dump(self): return "py_memory: " + self.inner.dump()


def test_python_tools_behave_like_cpp_tools(rng):
    prompts, scripts = addition_episodes(rng, 9)
    tools = [PyMemory, ToolSpec("search_memory"), ToolSpec("calculator")]
    env = Env(tools, batch_size=9, num_threads=4)
    assert env.num_threads == 1  # Python tools serialise on the GIL
    assert_same(replay(env, prompts, scripts), replay(Env(TOOLS, batch_size=9), prompts, scripts))
    assert env.dump(0)[0].startswith("py_memory: pointer_memory")


def test_python_tool_answers_are_checked():
    class Garbage(PyMemory):
        def call(self, command):
            return [VOCAB_SIZE + 7]

    t = replay(Env([Garbage], batch_size=1), [encode("a")], [[pointer_cmd(0, "read"), EOS]])
    assert t.episode(0)[0] == [*encode("a"), pointer_cmd(0, "read"), ERR, EOS]


@pytest.mark.parametrize("answer, got", [("ab", "str 'ab'"), (None, "NoneType None"), ([1, "x"], "list")])
def test_a_python_tool_answer_of_the_wrong_type_is_named(answer, got):
    class Wrong(PyMemory):
        def call(self, command):
            return answer

    with pytest.raises(TypeError, match=f"tool py_memory: call\\(\\) must return a list of int token ids, got {got}"):
        replay(Env([Wrong], batch_size=1), [encode("a")], [[pointer_cmd(0, "read"), EOS]])


def test_python_errors_propagate():
    class Broken(PyMemory):
        def call(self, command):
            raise RuntimeError("tool bug")

    with pytest.raises(RuntimeError, match="tool bug"):
        replay(Env([Broken], batch_size=2), [[ANS], [ANS]], [[pointer_cmd(0, "read")]] * 2)

    def failing_model(inputs):
        raise KeyError("model bug")

    with pytest.raises(KeyError, match="model bug"):
        rollout(failing_model, Env(TOOLS, batch_size=2), [[ANS], [ANS]], max_steps=3)


@pytest.mark.parametrize("call, error, match", [
    (lambda: Env([ToolSpec("pointer_memroy")], 1), ValueError, "unknown tool 'pointer_memroy'"),
    (lambda: Env([ToolSpec("pointer_memory", num_pointer=2)], 1), ValueError, "unknown option num_pointer"),
    (lambda: Env([ToolSpec("pointer_memory", num_pointers=9)], 1), ValueError, "num_pointers must be in 1..4"),
    (lambda: Env([ToolSpec("pointer_memory", num_pointers=1.5)], 1), TypeError, "num_pointers must be an int"),
    (lambda: Env([ToolSpec("calculator", max_digits="7")], 1), ValueError, "max_digits must be an integer"),
    (lambda: Env([3], 1), TypeError, r"tools\[0\]"),
    (lambda: Env([lambda: 3], 1), TypeError, r"tools\[0\]: the factory must return"),
    (lambda: Env(TOOLS, 0), ValueError, "batch_size must be >= 1"),
    (lambda: Env(TOOLS, 1, max_len=0), ValueError, "max_len must be >= 1"),
    (lambda: Env(TOOLS, 1, max_call_tokens=0), ValueError, "max_call_tokens"),
])
def test_bad_configuration_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("prompts, match", [
    ([[ANS]], "expected batch_size = 2 prompts, got 1"),
    ([[ANS], []], r"prompts\[1\] is empty"),
    ([[ANS], [3, VOCAB_SIZE]], r"prompts\[1\]\[1\] = 128 is not a token id"),
    ([[ANS], [ANS] * 9], r"prompts\[1\] has 9 tokens, more than max_len = 8"),
])
def test_bad_prompts_are_named(prompts, match):
    with pytest.raises(ValueError, match=match):
        Env(TOOLS, batch_size=2, max_len=8).reset(prompts)


@pytest.mark.parametrize("sampled, error, match", [
    (np.array([1, 2, 3]), ValueError, r"sampled: expected shape \(2,\), got \(3,\)"),
    (np.array([[1, 2]]), ValueError, r"sampled: expected shape \(2,\)"),
    (np.array([1.0, 2.0]), TypeError, "integer token ids"),
    (np.array([1, -1]), ValueError, r"sampled\[1\] = -1 is not a token id"),
    (np.array([1, 2**32 + 3]), ValueError, r"sampled\[1\] = 4294967299 is not a token id"),
])
def test_bad_samples_are_named(sampled, error, match):
    env = Env(TOOLS, batch_size=2)
    env.reset([[ANS], [ANS]])
    with pytest.raises(error, match=match):
        env.step(sampled)


def test_bad_model_output_is_named():
    with pytest.raises(ValueError, match=r"model_step output: expected shape \(2,\)"):
        rollout(lambda x: x[:1], Env(TOOLS, batch_size=2), [[ANS], [ANS]], max_steps=3)
    with pytest.raises(ValueError, match="model_tokens: expected one script per prompt"):
        replay(Env(TOOLS, batch_size=2), [[ANS], [ANS]], [[EOS]])


@pytest.mark.parametrize("prompts, error, match", [
    ([[ANS, 2.5]], TypeError, "int token ids"),
    ([["a"]], TypeError, "int token ids"),
    (["ab"], TypeError, r"prompts\[0\]: expected a list of token ids, got str"),
    ([np.array([1.0])], TypeError, r"prompts\[0\]: expected integer token ids"),
    (7, TypeError, "prompts: expected a list of token lists"),
])
def test_bad_prompt_types_are_named(prompts, error, match):
    with pytest.raises(error, match=match):
        Env(TOOLS, batch_size=1).reset(prompts)


def test_prompts_as_arrays_and_tensors():
    prompts = [np.array(encode("ab")), torch.tensor(encode("cd"))]
    first = Env(TOOLS, batch_size=2).reset(prompts)
    assert first.tolist() == [encode("a")[0], encode("c")[0]]
    t = replay(Env(TOOLS, batch_size=2), torch.tensor([encode("ab"), encode("cd")]), np.array([[EOS], [EOS]]))
    assert t.done.all() and t.episode(1)[0] == [*encode("cd"), EOS]


def test_prompts_and_scripts_as_bytes(rng):
    """bytes (one token per byte, the tasks' fast path) replay exactly like lists of ints."""
    prompts, scripts = addition_episodes(rng, 6)
    as_lists = replay(Env(TOOLS, batch_size=6), prompts, scripts, seed=2)
    as_bytes = replay(Env(TOOLS, batch_size=6), [bytes(p) for p in prompts], [bytes(s) for s in scripts], seed=2)
    assert_same(as_lists, as_bytes)
    assert as_bytes.tokens.dtype == torch.int64
    with pytest.raises(ValueError, match=r"model_tokens\[0\]\[1\] = 200 is not a token id"):
        replay(Env(TOOLS, batch_size=1), [b"\x01"], [bytes([EOS, 200])])


def test_replay_releases_the_gil():
    """While C++ replays, other Python threads run: the longest pause of a ticking thread is a small
    part of the replay (holding the GIL would pause it for the whole replay)."""
    import threading
    import time

    batch, length = 512, 4000
    env = Env(TOOLS, batch_size=batch, max_len=1 << 20)
    prompts, scripts = [encode("12+34=")] * batch, [[pointer_cmd(0, "read")] * length] * batch
    start = time.perf_counter()
    worker = threading.Thread(target=replay, args=(env, prompts, scripts))
    worker.start()
    ticks = []
    while worker.is_alive():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    total = time.perf_counter() - start
    assert len(ticks) > 2 and max(b - a for a, b in zip(ticks, ticks[1:])) < total / 2
