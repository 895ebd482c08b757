"""Coding (bug fixing): thread a missing variable through a synthetic Python codebase.

A codebase of n functions, one per file (n - 1 names drawn from f0 .. f99, and foo.py), called from
main.py along a random dependency graph (calls only go to functions later in the drawn order, foo
last: a DAG that main reaches entirely). Names come from one pool at every size, as the logical
graph's labels do: a codebase larger than any seen in training holds no name the model never wrote.
Locals are v0..v9; main.py defines v10, foo.py uses it, nobody passes it, so the first run dies with
NameError. The fix gives every function on a path from main to foo a last
parameter v10 and passes v10 to it at every call.

Functions are structures (`Function`), rendered to Python source for the sandbox and evaluated
directly from the structure for the expected output, so the grader never trusts the code it grades.
Episodes use the C++ CodeSandbox (`ls`, `cat <file>`, `edit <file>\\n<content>`, `run`):

* single_turn: `ls`, `cat` every file, then `edit` every file the fix touches, [EOS]. The edits must
  come from what the model read long before (the regime Theorem 1 says a fixed state cannot scale).
* interactive: `run`; walk up the traceback from the failing frame fixing at most 3 files (`cat`
  then `edit` each); `run` again; ... until it exits 0, then [EOS]. Each fix is local to what the
  traceback shows: the failing frame passes v10 to the callee that lacked it (NameError: nothing to
  pass) and gets parameter v10 itself; then the same one frame up, while a function newly gained
  the parameter (its callers now miss an argument).

The oracles (our stand-in for the paper's distilled SWE agent) play these strategies against a real
CodeSandbox; their tokens become trajectories through the real loop (`Env` + `replay`). Grading
replays the episode's edits onto the instance's codebase and runs it: pass iff it exits 0 and prints
the expected value.
"""
from __future__ import annotations

import hashlib
import operator
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .. import vocab as V
from ..env import ToolSpec
from .._tools import register_codebase
from ..tools import CodeSandbox
from .base import Task, forced, number, text

MODES = ("single_turn", "interactive")
BUG_VAR = "v10"
MODULUS = 1000  # every function returns (...) % 1000: numbers stay short at any depth
MAX_EDITS_PER_RUN = 3
EXTRA_CALL_PROBABILITY = 0.3
NAME_POOL = 100  # function names f0 .. f99
_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
_FRAME = re.compile(r'File "(\w+)\.py", line \d+, in ')
_MISSING = re.compile(rf"(\w+)\(\) missing 1 required positional argument: '{BUG_VAR}'")
_UNDEFINED = f"NameError: name '{BUG_VAR}' is not defined"


@dataclass(frozen=True)
class Expr:
    """left op right; operands are variable names or small ints."""
    left: str | int
    op: str
    right: str | int

    def __str__(self) -> str:
        return f"{self.left} {self.op} {self.right}"

    def evaluate(self, env: dict[str, int]) -> int:
        left, right = (env[x] if isinstance(x, str) else x for x in (self.left, self.right))
        return _OPS[self.op](left, right)


@dataclass(frozen=True)
class Assign:
    target: str
    expr: Expr


@dataclass(frozen=True)
class Call:
    target: str
    callee: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class Function:
    """One file: a function, or main (module-level code that defines `constants`, prints the result)."""
    name: str
    params: tuple[str, ...]
    body: tuple[Assign | Call, ...]
    result: Expr  # returned (printed by main) modulo MODULUS
    constants: tuple[tuple[str, int], ...] = ()

    @property
    def file(self) -> str:
        return f"{self.name}.py"

    @property
    def callees(self) -> tuple[str, ...]:
        return tuple(s.callee for s in self.body if isinstance(s, Call))


@dataclass(frozen=True)
class Codebase:
    functions: tuple[Function, ...]  # main first, then the functions in call order, foo last

    def function(self, name: str) -> Function:
        return next(f for f in self.functions if f.name == name)

    def needs_v10(self) -> frozenset[str]:
        """Functions on a path from main to foo: foo and its ancestors, who must take v10."""
        reach = {"foo"}
        for fn in reversed(self.functions[1:]):
            if reach.intersection(fn.callees):
                reach.add(fn.name)
        return frozenset(reach)

    def fix(self) -> dict[str, "FixState"]:
        """The fix, per function: foo and its ancestors take v10, every call of one passes it."""
        need = self.needs_v10()
        return {fn.name: FixState(fn.name in need, need.intersection(fn.callees)) for fn in self.functions}

    def files(self, fixed: bool = False) -> dict[str, str]:
        """The codebase as generated (with the bug), or with the fix."""
        states = self.fix() if fixed else {}
        return {fn.file: render(fn, states.get(fn.name, FixState())) for fn in self.functions}

    def expected_output(self) -> int:
        """What the fixed main.py prints, computed from the structures (no Python source involved)."""
        main = self.functions[0]
        bug_value = dict(main.constants)[BUG_VAR]

        def run(fn: Function, env: dict[str, int]) -> int:
            for stmt in fn.body:
                env[stmt.target] = (call(self.function(stmt.callee), [env[a] for a in stmt.args])
                                    if isinstance(stmt, Call) else stmt.expr.evaluate(env))
            return fn.result.evaluate(env) % MODULUS

        def call(fn: Function, args: list[int]) -> int:
            return run(fn, dict(zip(fn.params, args), **{BUG_VAR: bug_value}))

        return run(main, dict(main.constants))


@dataclass(frozen=True)
class FixState:
    """How far a file has been fixed: v10 among its parameters, the callees it passes v10 to."""
    takes_v10: bool = False
    passes_to: frozenset[str] = field(default_factory=frozenset)


# ---------------------------------------------------------------------------------- rendering
def _statement(stmt: Assign | Call, passes_to: frozenset[str]) -> str:
    if isinstance(stmt, Assign):
        return f"{stmt.target} = {stmt.expr}"
    args = stmt.args + ((BUG_VAR,) if stmt.callee in passes_to else ())
    return f"{stmt.target} = {stmt.callee}({', '.join(args)})"


def render(fn: Function, state: FixState = FixState()) -> str:
    """The Python source of fn's file in a given fix state."""
    imports = [f"from {c} import {c}" for c in fn.callees] + [""]
    body = [_statement(s, state.passes_to) for s in fn.body]
    if fn.name == "main":
        lines = imports + [f"{var} = {value}" for var, value in fn.constants] + body
        lines.append(f"print(({fn.result}) % {MODULUS})")
    else:
        params = fn.params + ((BUG_VAR,) if state.takes_v10 else ())
        lines = (imports if fn.callees else []) + [f"def {fn.name}({', '.join(params)}):"]
        lines += ["    " + line for line in body + [f"return ({fn.result}) % {MODULUS}"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- generation
def function_names(rng: np.random.Generator, n: int, name_pool: int = NAME_POOL) -> list[str]:
    """The names of n functions in call order, foo last: n - 1 drawn without replacement from
    f0 .. f{name_pool-1} in random order; name_pool 0: f0 .. f{n-2} in order (draws nothing)."""
    if name_pool == 0:
        return [f"f{i}" for i in range(n - 1)] + ["foo"]
    if n - 1 > name_pool:
        raise ValueError(f"name_pool {name_pool} holds too few names for {n} functions")
    return [f"f{int(i)}" for i in rng.choice(name_pool, n - 1, replace=False)] + ["foo"]


def _build_function(rng: np.random.Generator, name: str, params: tuple[str, ...], callees: list[str],
                    arity: dict[str, int], constants: tuple[tuple[str, int], ...] = ()) -> Function:
    names = list(params)

    def pick() -> str:
        return names[int(rng.integers(len(names)))]

    def operand() -> str | int:
        return pick() if rng.random() < 0.7 else int(rng.integers(1, 10))

    body: list[Assign | Call] = [Assign(f"v{len(names)}", Expr(pick(), str(rng.choice(list(_OPS))),
                                                                BUG_VAR if name == "foo" else operand()))]
    names.append(body[0].target)
    for callee in callees:
        body.append(Call(f"v{len(names)}", callee, tuple(pick() for _ in range(arity[callee]))))
        names.append(body[-1].target)
    return Function(name, params, tuple(body), Expr(names[-1], str(rng.choice(["+", "-"])), names[-2]), constants)


def generate(rng: np.random.Generator, n: int, name_pool: int = NAME_POOL) -> Codebase:
    """A random codebase of n >= 2 functions (function_names) plus main.py."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 2:
        raise ValueError(f"n (number of functions) must be an int >= 2, got {n!r}")
    names = function_names(rng, int(n), name_pool)
    calls: dict[str, list[str]] = {name: [] for name in ["main"] + names}
    calls["main"].append(names[0])
    for j in range(1, len(names)):  # a random earlier caller: a tree that main reaches entirely
        calls[names[int(rng.integers(j))]].append(names[j])
    # Extra calls give foo several paths from main. At 0.3 about 40% of the functions need v10, and
    # interactive trajectories at n = 16 stay under the paper's 8,192-token context (mean ~4k).
    for i, name in enumerate(["main"] + names[:-1]):
        later = [c for c in names[i:] if c not in calls[name]]
        if later and len(calls[name]) < 3 and rng.random() < EXTRA_CALL_PROBABILITY:
            calls[name].append(later[int(rng.integers(len(later)))])
    order = {name: k for k, name in enumerate(names)}
    arity = {name: int(rng.integers(1, 3)) for name in names}
    constants = ((BUG_VAR, int(rng.integers(2, 10))), ("v0", int(rng.integers(1, 10))), ("v1", int(rng.integers(1, 10))))
    functions = [_build_function(rng, name, tuple(f"v{i}" for i in range(arity[name])),
                                 sorted(calls[name], key=order.get), arity) for name in names]
    main = _build_function(rng, "main", ("v0", "v1"), sorted(calls["main"], key=order.get), arity, constants)
    return Codebase((main, *functions))


# ---------------------------------------------------------------------------------- oracles
class _Session:
    """Plays text commands against a sandbox; records the script (model tokens, forced answers)."""

    def __init__(self, codebase: Codebase, sandbox: CodeSandbox):
        self.sandbox = sandbox
        self.sandbox.load(codebase.files())
        self.script: list[int] = []

    def call(self, command: str) -> str:
        cmd = text(command)
        answer = self.sandbox.call(cmd)
        self.script += [V.CALL, *cmd, V.CALL_END, *forced([V.RESULT, *answer, V.RESULT_END])]
        if answer and answer[0] == V.ERR:
            raise RuntimeError(f"oracle command {command!r} was refused: {V.decode(answer)}")
        return V.decode(answer)

    def edit(self, fn: Function, state: FixState) -> None:
        self.call(f"edit {fn.file}\n{render(fn, state)}")


def single_turn_script(codebase: Codebase, sandbox: CodeSandbox) -> list[int]:
    """ls, cat every file, then every edit of the fix, [EOS]."""
    session = _Session(codebase, sandbox)
    files = session.call("ls").split("\n")
    for file in files:
        session.call(f"cat {file}")
    fix = codebase.fix()
    for file in files:
        fn = codebase.function(file[:-len(".py")])
        if fix[fn.name] != FixState():
            session.edit(fn, fix[fn.name])
    return session.script + [V.EOS]


def parse_traceback(output: str) -> tuple[list[str], str | None]:
    """(the functions of the traceback's frames, outermost first; the callee that missed v10, None
    for the NameError in foo). ValueError if the output is neither failure of the bug."""
    frames = _FRAME.findall(output)
    missing = _MISSING.search(output)
    if not frames or not (missing or _UNDEFINED in output):
        raise ValueError(f"output is not a v10 NameError/TypeError traceback:\n{output}")
    return frames, missing.group(1) if missing else None


def interactive_script(codebase: Codebase, sandbox: CodeSandbox) -> list[int]:
    """run; fix up to 3 files up the traceback; run; ... until exit 0; [EOS]."""
    session = _Session(codebase, sandbox)
    state = {fn.name: FixState() for fn in codebase.functions}
    for _ in range(5 * len(codebase.functions)):  # a round fixes >= 1 of the <= 4n calls and parameters
        output = session.call("run")
        if output.startswith("exit 0\n"):
            return session.script + [V.EOS]
        frames, callee = parse_traceback(output)
        for name in list(reversed(frames))[:MAX_EDITS_PER_RUN]:
            fn, old = codebase.function(name), state[name]
            if session.call(f"cat {fn.file}") != render(fn, old):
                raise RuntimeError(f"oracle lost track of {fn.file}")
            state[name] = FixState(name != "main", old.passes_to | ({callee} if callee else set()))
            session.edit(fn, state[name])
            if old.takes_v10 == state[name].takes_v10:
                break  # the callers of `name` are unaffected by this fix
            callee = name
    raise RuntimeError("interactive oracle did not converge (sandbox limits too tight?)")


SCRIPTS = {"single_turn": single_turn_script, "interactive": interactive_script}


# ---------------------------------------------------------------------------------- grading
def call_commands(tokens: Sequence[int]) -> list[list[int]]:
    """The command tokens of every [CALL] ... [/CALL] of an episode, in order."""
    commands, current = [], None
    for t in tokens:
        t = int(t)
        if t == V.CALL:
            current = []
        elif t == V.CALL_END and current is not None:
            commands.append(current)
            current = None
        elif current is not None:
            current.append(t)
    return commands


def fixed_codebase(codebase: Codebase, tokens: Sequence[int], sandbox: CodeSandbox) -> dict[str, str]:
    """The codebase after the episode's edits, each applied (or refused) as the sandbox did."""
    sandbox.load(codebase.files())
    edit = text("edit")
    for command in call_commands(tokens):
        if command[:len(edit)] == edit:
            sandbox.call(command)
    return sandbox.files()


# ---------------------------------------------------------------------------------- the task
@dataclass(frozen=True)
class Instance:
    codebase: Codebase
    key: str  # the prompt's first line; the sandbox finds the codebase under it


class Coding(Task):
    """Bug fixing in a synthetic codebase of `size` functions with the C++ CodeSandbox.

    Prompt: [BOS] "fix codebase <12 hex digits>" newline -- the hex digits name the codebase (a hash
    of its files), which prompt() registers for the episode's sandbox (ToolSpec "code_sandbox" with
    codebase_from_prompt): the codebase itself is only seen through the tool. answer(): what the
    fixed main.py prints; grade() runs the episode's fixed codebase and compares with it."""

    name = "coding"
    modes = MODES
    size_name = "functions"
    min_size = 2
    oracle_threads = 8  # each oracle waits on its sandbox's runs (tens of ms each)

    def __init__(self, mode: str = "interactive", cpu_seconds: int = 2, wall_ms: int = 5000,
                 memory_bytes: int = 256 << 20, max_response_chars: int = 320, isolation: str = "namespaces",
                 name_pool: int = NAME_POOL):
        """isolation: "namespaces" (the sandbox's jail) or "none" (no jail: programs run with your
        rights; only for kernels that refuse user namespaces, see docs/sandbox.md). name_pool: the
        function names f0 .. f{name_pool-1} every codebase draws from (0: f0 .. f{n-2} in order)."""
        super().__init__(mode)
        if not isinstance(name_pool, int) or isinstance(name_pool, bool) or name_pool < 0:
            raise ValueError(f"name_pool must be an int >= 0, got {name_pool!r}")
        self.name_pool = name_pool
        # The interpreter running this code, given by path: no PATH lookup (pyenv shims cost 0.2 s a
        # run); its site-packages stay out (-S in the sandbox).
        self.sandbox_options = dict(cpu_seconds=cpu_seconds, wall_ms=wall_ms, memory_bytes=memory_bytes,
                                    max_response_chars=max_response_chars, python=sys.executable,
                                    isolation=isolation)
        CodeSandbox(**self.sandbox_options)  # bad limits fail here, naming the option

    def sandbox(self) -> CodeSandbox:
        """A sandbox with this task's limits, for the oracles and the grader (codebase by load())."""
        return CodeSandbox(**self.sandbox_options)

    def sample(self, rng: np.random.Generator, size: int) -> Instance:
        codebase = generate(rng, self.check_size(size), self.name_pool)
        digest = hashlib.sha1(repr(sorted(codebase.files().items())).encode()).hexdigest()[:12]
        return Instance(codebase, f"fix codebase {digest}")

    def sample_train(self, rng: np.random.Generator, max_size: int) -> Instance:
        m = self.check_size(max_size, "max_size")
        return self.sample(rng, int(rng.integers(self.min_size, m + 1)))

    def prompt(self, inst: Instance) -> list[int]:
        register_codebase(inst.key, inst.codebase.files())  # here, so it is fresh when the episode starts
        return [V.BOS, *text(inst.key + "\n")]

    def answer(self, inst: Instance) -> list[int]:
        return number(str(inst.codebase.expected_output()))

    def tools(self) -> list:
        return [ToolSpec("code_sandbox", **self.sandbox_options)]

    def max_steps(self, size: int) -> int:
        """Above the oracles' longest trajectories (measured at 2..30 functions: at most ~0.75 of
        this; interactive lengths are heavy-tailed, one unlucky graph needs many rounds)."""
        base, per_function = (2000, 1000) if self.mode == "interactive" else (600, 300)
        return base + per_function * self.check_size(size)

    def _script(self, inst: Instance, mode: str) -> list[int]:
        return SCRIPTS[mode](inst.codebase, self.sandbox())

    def grade(self, inst: Instance, tokens: Sequence[int], mask: Sequence[bool] | None = None) -> bool:
        """The episode's edits make main.py exit 0 printing the expected value (whatever the fix)."""
        sandbox = self.sandbox()
        sandbox.load(fixed_codebase(inst.codebase, tokens, sandbox))
        status, output = sandbox.run_program()
        return status == "exit 0" and output.strip() == str(inst.codebase.expected_output())
