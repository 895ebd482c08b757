"""Fixtures shared by the test files: one replayable seed per test, and the check that the tests
leave the checkout as they found it; helpers several files use (a killed run, packed rows' seq_idx,
OracleModel)."""
import os
import random
import secrets
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SEED_VARIABLE = "SSM_TOOLS_TEST_SEED"


@pytest.fixture(autouse=True)
def seed() -> int:
    """This test's seed: $SSM_TOOLS_TEST_SEED if set, else a fresh one. It seeds torch's, NumPy's
    and Python's global generators too, and is printed (pytest shows it when the test fails) so the
    failure replays with the variable set."""
    value = int(os.environ.get(SEED_VARIABLE) or secrets.randbits(32))
    print(f"replay with {SEED_VARIABLE}={value}")
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)
    return value


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch) -> None:
    """Every test runs in its own temporary folder: what it writes to relative paths (runs/,
    results/, a subprocess's output) lands there, not in the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def rng(seed) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- the checkout is left as it was -----------------------------------------------------------------
# Folders that building and running Python make, not the tests: the virtual environment, the
# build tree (pytest's cache is there too, see pyproject.toml) and bytecode.
SKIPPED_DIRS = {".git", ".venv", "build", "__pycache__"}


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under `root` outside SKIPPED_DIRS (and any virtual environment),
    tracked or not, ignored or not: a file the tests add, change or delete anywhere shows."""
    state = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not (Path(folder, d, "pyvenv.cfg")).exists()]
        for name in files:
            path = Path(folder, name)
            try:
                stat = path.lstat()
            except FileNotFoundError:  # removed while we walked
                continue
            state[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return state


def tree_changes(before: dict, after: dict) -> list[str]:
    return sorted(f"{'added' if p not in before else 'removed' if p not in after else 'changed'} {p}"
                  for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def pytest_sessionstart(session):
    session.config.stash[TREE] = tree_state(ROOT)
    # torch.compile caches compiled graphs in one folder under /tmp shared by every checkout on the
    # machine, and replays one made with another build's op schemas: the session gets its own.
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = session.config.stash[COMPILE_CACHE] = tempfile.mkdtemp(
            prefix="ssm-tools-tests-inductor-")


def pytest_sessionfinish(session):
    if COMPILE_CACHE in session.config.stash:
        shutil.rmtree(session.config.stash[COMPILE_CACHE], ignore_errors=True)
    if DEFERRED_CHECK in session.config.stash:
        run_deferred_check(session)


def pytest_collection_modifyitems(session, config, items):
    """Slow tests first: under pytest-xdist (`make test` runs the tests on 2 workers) the longest start
    first and the short ones fill the other worker around them. The checkout check runs after every
    other test: in a worker (which cannot know when the others are done) it is deselected, and the
    controller runs it once every worker has finished (pytest_testnodedown, run_deferred_check)."""
    last = [item for item in items if item.name == CHECK_NAME]
    rest = sorted((item for item in items if item.name != CHECK_NAME), key=start_order)
    if last and hasattr(config, "workerinput"):
        config.hook.pytest_deselected(items=last)
        config.workeroutput[CHECK_NAME] = {"nodeid": last[0].nodeid, "location": list(last[0].location)}
        last = []
    items[:] = rest + last


def start_order(item) -> tuple[bool, float]:
    """Slow tests first, the longest (the `minutes` of their `slow` marker) first among them; the sort is
    stable, so files keep their order."""
    slow = item.get_closest_marker("slow")
    return slow is None, -(slow.kwargs.get("minutes", 0) if slow else 0)


def pytest_configure(config):
    """An xdist worker takes its share of the cores for torch's threads: workers each on every core
    would oversubscribe them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if hasattr(config, "workerinput") and workers > 1:
        torch.set_num_threads(max(1, torch.get_num_threads() // workers))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """In the xdist controller: a worker that deselected the checkout check hands it over."""
    check = getattr(node, "workeroutput", {}).get(CHECK_NAME)
    if check is not None:
        node.config.stash[DEFERRED_CHECK] = check


def run_deferred_check(session) -> None:
    """The checkout check, run by the xdist controller after every worker finished, and reported as
    the test itself (pass or fail, counted in the summary and the exit status)."""
    check = session.config.stash[DEFERRED_CHECK]
    changes = tree_changes(session.config.stash[TREE], tree_state(ROOT))
    report = pytest.TestReport(check["nodeid"], tuple(check["location"]), {}, "failed" if changes else "passed",
                               "the tests changed the checkout:\n" + "\n".join(changes) if changes else None, "call")
    session.testscollected += 1  # the workers' counts left it out
    session.config.hook.pytest_runtest_logreport(report=report)
    if changes:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


TREE = pytest.StashKey[dict]()
COMPILE_CACHE = pytest.StashKey[str]()
DEFERRED_CHECK = pytest.StashKey[dict]()
CHECK_NAME = "test_the_tests_leave_the_checkout_as_they_found_it"


@pytest.fixture
def tree_at_start(request) -> dict:
    return request.config.stash[TREE]


# -- a training process killed mid-run ---------------------------------------------------------------
class Killed(Exception):
    pass


def run_killed_after(trainer, steps: int) -> None:
    """trainer.run(), killed once `steps` steps are done: nothing after them is written, so the
    run folder holds the last periodic checkpoint, as after a real kill."""
    take_step = trainer.train_step

    def train_step():
        if trainer.step == steps:
            raise Killed
        return take_step()

    trainer.train_step = train_step
    try:
        trainer.run()
    except Killed:
        return
    raise AssertionError(f"the run ended before step {steps}")


def packed_seq_idx(gen, seqlen, rows):
    """(len(rows), seqlen) int32 sequence index. Each entry of `rows` is a list of sequence start
    positions (besides 0), or an int: that many random starts. Labels are random (only changes count,
    and the same label may come back after another one)."""
    out = torch.empty(len(rows), seqlen, dtype=torch.int32)
    for b, row in enumerate(rows):
        starts = row if isinstance(row, list) else torch.randperm(seqlen - 1, generator=gen)[:row].add(1).tolist()
        labels = torch.randint(0, 3, (seqlen,), generator=gen)
        label = 0
        for t in range(seqlen):
            if t in starts:
                label = (label + 1 + int(labels[t])) % 4
            out[b, t] = label
    return out


class OracleModel:
    """A stand-in "model" that predicts, after each token of an episode, the next token of the
    oracle's expected stream (teacher forcing in reverse): driven through the real loop by
    evaluate(), it must score 1.0 -- or 0.0 on the episodes whose answer digits are corrupted
    (`corrupt`: True for every episode, or the indices of some)."""

    vocab_size = 128
    fixed_size_state = True

    def __init__(self, streams, corrupt=False):
        self.streams = [list(s) for s in streams]
        for i, s in enumerate(self.streams):
            if corrupt is True or (corrupt and i in corrupt):
                ans = s.index(3)  # [ANS]
                s[ans + 4] = s[ans + 4] % 10 + 27 + 16  # a read-back output digit changed
        self.pos = None

    def eval(self):
        return self

    def __call__(self, x):
        """Teacher-forced logits of a batch of episode prefixes (rows in any order, PAD after an
        episode's end): each row's episode is found by its prompt (the first 8 tokens differ)."""
        logits = torch.zeros(*x.shape, self.vocab_size)
        for r, row in enumerate(x.tolist()):
            s = next(s for s in self.streams if s[:8] == row[:8])
            for j in range(min(len(row), len(s) - 1)):
                logits[r, j, s[j + 1]] = 1.0
        return logits

    def init_state(self, batch_size, device=None):
        self.pos = [0] * batch_size
        return None

    def step_unchecked(self, tokens, state):
        logits = torch.zeros(len(self.streams), self.vocab_size)
        for i, s in enumerate(self.streams):
            self.pos[i] += 1
            logits[i, s[self.pos[i]] if self.pos[i] < len(s) else 0] = 1.0
        return logits, state
