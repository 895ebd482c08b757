"""Episodes of tool use: the batched dispatch loop (C++ core in csrc/tools/env.{h,cpp}).

Protocol (token ids in ``ssm_tools.vocab``; the grammar is also in csrc/tools/vocab.h)
-------------------------------------------------------------------------------------
* An episode is one token stream. The model consumes it token by token; each token is either *forced*
  (the prompt, a tool's answer) or *generated* by the model. The prompt is forced, token by token.
* Memory = the prompt, then every generated token that is a thought or output: a character, '\\n',
  ``[ANS]`` (thoughts before it, outputs after it) or ``[EOS]``. Commands, call text, write symbols and
  forced answers never enter memory. Every tool observes the memory tokens in order.
* Pointer commands are one generated token (``pointer_cmd(p, op)``). ``read`` is answered by one forced
  token: the cell under the pointer, ``[BLANK]`` one past the end of memory, ``[ERR]`` for a pointer the
  tool does not have. ``left``/``right`` are answered by nothing, or ``[ERR]`` (pointer unchanged) when
  moving left of cell 0 or right of one-past-the-end. ``write`` (TapeMemory) is followed by one
  generated symbol token (a character or ``[BLANK]``) and is answered like a move. Pointers start on
  cell 0, the first prompt token.
* A text call is ``[CALL] <command> <args> [/CALL]`` (generated; characters and '\\n' only, at most
  ``max_call_tokens``). It goes to the first tool that accepts it and is answered by the forced
  ``[RESULT] <text> [/RESULT]``. Errors: ``[RESULT] [ERR] <message> [/RESULT]`` (unknown command, a call
  that is too long, a non-character token inside the call, a tool's own usage errors). Commands:
  ``find <x>`` (SearchMemory: every memory line containing x as a whole word, joined by '\\n'),
  ``add <a> <b>`` (Calculator), ``ls``, ``cat <file>``, ``edit <file>\\n<content>``, ``run`` (CodeSandbox).
* Any other protocol token generated out of place (``[PAD] [BOS] [ERR] [BLANK] [/CALL] [RESULT]
  [/RESULT]``) is answered by a forced ``[ERR]`` and not stored.
* ``[EOS]`` (generated, in any state) ends the episode; so does reaching ``max_len`` tokens. Done
  episodes emit ``[PAD]``.

Training data: ``Transcript.tokens[:, j]`` is predicted from ``tokens[:, :j]`` where
``loss_mask[:, j]`` (the generated tokens); prompt, forced answers and padding are masked out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

import numpy as np
import torch

from . import _tools
from .tools import Tool
from .vocab import decode


@dataclass(frozen=True)
class ToolSpec:
    """A C++ tool by name with its options, e.g. ``ToolSpec("pointer_memory", num_pointers=2)``.
    Names: ``ssm_tools.tools.registered_tools()``; unknown names or options raise ValueError."""

    name: str
    options: dict = field(default_factory=dict)

    def __init__(self, name: str, **options):
        if not isinstance(name, str):
            raise TypeError(f"ToolSpec name must be a str, got {type(name).__name__}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "options", dict(options))


ToolLike = Union[ToolSpec, Callable[[], Tool]]


@dataclass
class Transcript:
    """Episodes as the model consumed them (generated and ground-truth trajectories alike)."""

    tokens: torch.Tensor     # (B, T) int64, PAD after each episode's end
    loss_mask: torch.Tensor  # (B, T) bool, True where the model generated the token
    lengths: torch.Tensor    # (B,) int64
    done: torch.Tensor       # (B,) bool: ended by [EOS] or max_len

    def episode(self, i: int) -> tuple[list[int], list[bool]]:
        n = int(self.lengths[i])
        return self.tokens[i, :n].tolist(), self.loss_mask[i, :n].tolist()

    def text(self, i: int) -> str:
        return decode(self.episode(i)[0])

    @classmethod
    def _from_arrays(cls, arrays) -> "Transcript":
        tokens, mask, lengths, done = arrays
        return cls(torch.from_numpy(tokens), torch.from_numpy(mask), torch.from_numpy(lengths),
                   torch.from_numpy(done))


def _as_int_array(x, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        raise TypeError(f"{what}: expected integer token ids, got dtype {x.dtype}")
    return x


class Env:
    """``batch_size`` episodes, each with its own instances of ``tools`` (``ToolSpec``: C++ instances
    built in C++; a callable: called once per episode, e.g. a Python ``Tool`` subclass (slower: the loop
    takes the GIL for each of its calls, and runs on one thread)). ``num_threads=0``: all cores."""

    def __init__(self, tools: Sequence[ToolLike], batch_size: int, max_len: int = 1 << 16,
                 num_threads: int = 0, max_call_tokens: int = 4096, max_answer_tokens: int = 1 << 16):
        items = []
        for j, t in enumerate(tools):
            if isinstance(t, ToolSpec):
                items.append((t.name, t.options))
            elif callable(t):
                items.append(t)
            else:
                raise TypeError(f"tools[{j}]: expected a ToolSpec or a callable returning a Tool, got {t!r}")
        self._env = _tools.Env(items, batch_size, max_len, num_threads, max_call_tokens, max_answer_tokens)
        self.batch_size = batch_size
        self.max_len = max_len

    @property
    def num_threads(self) -> int:
        return self._env.num_threads

    def reset(self, prompts: Sequence[Sequence[int]], seed: int = 0) -> np.ndarray:
        """Start every episode; returns each episode's first input token, (B,) int32."""
        return self._env.reset(_as_token_lists(prompts, "prompts"), seed)

    def step(self, sampled) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One token per episode: (next_tokens (B,) int32, forced (B,) bool, done (B,) bool)."""
        return self._env.step(_as_int_array(sampled, "sampled"))

    def transcript(self) -> Transcript:
        """Everything consumed since reset."""
        return Transcript._from_arrays(self._env.transcript())

    def dump(self, i: int) -> list[str]:
        """The dump() of each tool of episode i."""
        return self._env.dump(i)


def _as_token_lists(lists, what: str) -> list:
    """`lists` as a list of token sequences, checked cheaply here; the elements are converted in C++
    (pybind11), far faster than int() per token in Python. A bytes item holds one token per byte
    (the packed form of the tasks' oracles: C++ widens it without a Python int per token)."""
    if isinstance(lists, (torch.Tensor, np.ndarray)) and lists.ndim != 1:
        lists = list(lists)
    if not isinstance(lists, (list, tuple)):
        raise TypeError(f"{what}: expected a list of token lists, got {type(lists).__name__}")
    out = []
    for i, seq in enumerate(lists):
        if isinstance(seq, (list, tuple, bytes)):
            pass  # handed to C++ as it is (checked first: the common case)
        elif isinstance(seq, torch.Tensor):
            seq = seq.tolist()
        elif isinstance(seq, np.ndarray):
            if seq.dtype.kind not in "iu":
                raise TypeError(f"{what}[{i}]: expected integer token ids, got dtype {seq.dtype}")
            seq = seq.tolist()
        else:
            raise TypeError(f"{what}[{i}]: expected a list of token ids, got {type(seq).__name__}")
        out.append(seq)
    return out


def rollout(model_step: Callable[[torch.Tensor], torch.Tensor], env: Env, prompts: Sequence[Sequence[int]],
            max_steps: int, seed: int = 0) -> Transcript:
    """Run the model in the loop: ``model_step(input (B,) LongTensor) -> sampled (B,) LongTensor`` is
    called once per step (it keeps its own recurrent state), at most ``max_steps`` times, stopping
    early when every episode is done. The C++ loop releases the GIL between calls."""

    def step_numpy(inputs: np.ndarray) -> np.ndarray:
        return _as_int_array(model_step(torch.from_numpy(inputs).long()), "model_step output")

    env._env.rollout(step_numpy, _as_token_lists(prompts, "prompts"), max_steps, seed)
    return env.transcript()


def replay(env: Env, prompts: Sequence[Sequence[int]], model_tokens: Sequence[Sequence[int]],
           seed: int = 0) -> Transcript:
    """Scripted policy in C++: episode i emits ``model_tokens[i]`` in order whenever no forced token is
    queued, until [EOS], max_len or the script runs out. Turns an oracle's actions into a training
    trajectory through the real loop. Prompts and scripts: lists of token ids, 1-D integer arrays, or
    bytes (one token per byte, the fast path the tasks use)."""
    env._env.replay(_as_token_lists(prompts, "prompts"), _as_token_lists(model_tokens, "model_tokens"), seed)
    return env.transcript()
