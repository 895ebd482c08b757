"""Trajectory pools (ssm_tools.pool): built as the Trainer draws, stored and loaded exactly, bad
files refused with a clear error, a Trainer drawing from one resumes exactly, and `reproduce` builds
one pool per mode that all its runs share."""
import json
import zipfile

import numpy as np
import pytest
import torch

from ssm_tools import pool as P
from ssm_tools import reproduce as R
from ssm_tools.cli import main
from ssm_tools.config import load_config
from ssm_tools.train import CHECKPOINT, Trainer, TrainConfig
from ssm_tools.tasks import get_task

from conftest import run_killed_after

TINY = dict(vocab_size=128, d_model=16, n_layers=1, d_state=4)


@pytest.fixture(scope="module")
def addition_pool(tmp_path_factory):
    """A pool of addition episodes (two build chunks) of 1..3-digit operands, and its file."""
    config = load_config("addition")
    built = P.build_pool(config, P.BUILD_CHUNK + 6, seed=5, train_max_size=3)
    return config, built, P.save(built, tmp_path_factory.mktemp("pool") / "addition.npz")


def test_a_pool_holds_the_trainers_own_draw_and_loads_back_exactly(addition_pool):
    config, built, path = addition_pool
    rng = np.random.default_rng(5)
    first, _ = get_task("addition").trajectories(rng, [3] * P.BUILD_CHUNK, train=True)
    tokens, mask, lengths = built.episodes(np.arange(P.BUILD_CHUNK))
    assert torch.equal(lengths, first.lengths)
    assert torch.equal(tokens, first.tokens[:, :tokens.shape[1]]) and torch.equal(mask, first.loss_mask[:, :tokens.shape[1]])
    loaded = P.load(path)
    assert loaded.meta == built.meta and len(loaded) == P.BUILD_CHUNK + 6
    for name in P.ARRAYS:
        assert np.array_equal(getattr(loaded, name), getattr(built, name)) and getattr(loaded, name).dtype == P.ARRAYS[name]
    assert loaded.identity() == {"task": config["task"], "train_max_size": 3, "seed": 5, "episodes": len(loaded),
                                 "digest": built.meta["digest"], "tokens": int(built.lengths.sum())}
    assert P.build_pool(config, len(loaded), seed=6, train_max_size=3).meta["digest"] != built.meta["digest"]


def test_a_build_out_of_time_keeps_its_first_chunks_and_is_reused(addition_pool, tmp_path):
    config, built, _ = addition_pool
    short = P.ensure(tmp_path / "p.npz", config, len(built), seed=5, train_max_size=3, max_seconds=1e-9)
    assert len(short) == P.BUILD_CHUNK and short.meta["episodes"] == P.BUILD_CHUNK
    assert np.array_equal(short.lengths, built.lengths[:P.BUILD_CHUNK])
    assert P.ensure(tmp_path / "p.npz", config, len(built), seed=5, train_max_size=3).meta == short.meta
    with pytest.raises(ValueError, match=f"p.npz holds a pool of {P.BUILD_CHUNK} episodes of .*'seed': 5.*, not of .*'seed': 6"):
        P.ensure(tmp_path / "p.npz", config, len(built), seed=6, train_max_size=3)


def test_a_coding_pool_does_not_depend_on_the_threads_that_built_it():
    config = {**load_config("coding"), "sizes": {"train": [2, 3], "test": [4]}}
    one, two = (P.build_pool(config, 6, seed=1, threads=t) for t in (1, 2))
    assert one.meta == two.meta and np.array_equal(one.tokens, two.tokens)
    assert one.tokens.max() < 128 and one.loss_mask.any()


def rewrite(path, out, **changes):
    """The pool file `path` written to `out` with arrays replaced or removed (None), no digest fixed."""
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for k, v in changes.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    np.savez(out, **arrays)
    return out


def with_meta(path, **fields):
    with np.load(path) as npz:
        meta = {**json.loads(str(npz["meta"])), **fields}
    return np.array(json.dumps(meta))


@pytest.mark.parametrize("change, words", [
    (dict(tokens=None), "it holds \\['lengths', 'loss_mask', 'meta'\\]"),
    (dict(extra=np.zeros(2)), "it holds \\['extra', "),
    (dict(tokens=np.array([object()] * 4)), "Object arrays cannot be loaded"),
    (dict(lengths=np.array([1.5])), "lengths must be a 1-D int64 array, got 1-D float64"),
    (dict(loss_mask=np.zeros((2, 2), bool)), "loss_mask must be a 1-D bool array, got 2-D bool"),
    (dict(meta=np.array("{not json")), "meta is not JSON"),
    (dict(meta=np.array(["a"])), "meta must be one string"),
    ("format", "format 'ssm-tools trajectory pool 1'"),
    ("episodes", "262 episodes \\(meta: 263\\)"),
    ("flip", "its digest does not match its content"),
    ("vocab", "token id 200 is outside the vocabulary"),
])
def test_bad_pool_files_are_refused_naming_the_file_and_the_fault(addition_pool, tmp_path, change, words):
    _, built, path = addition_pool
    out = tmp_path / "bad.npz"
    if change == "format":
        change = dict(meta=with_meta(path, format="something else 1"))
    elif change == "episodes":
        change = dict(meta=with_meta(path, episodes=P.BUILD_CHUNK + 7))
    elif change == "flip":
        change = dict(tokens=built.tokens ^ np.uint8(1))
    elif change == "vocab":  # a digest that matches: the vocabulary check itself refuses it
        tokens = built.tokens.copy()
        tokens[3] = 200
        change = dict(tokens=tokens, meta=with_meta(path, digest=P.digest(tokens, built.loss_mask, built.lengths,
                                                                          built.meta)))
    rewrite(path, out, **change)
    with pytest.raises(ValueError, match=f"{out} is not a valid trajectory pool: .*{words}"):
        P.load(out)


def test_files_that_are_no_npz_are_refused(tmp_path):
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="text.npz is not a valid trajectory pool: not a .npz file"):
        P.load(tmp_path / "text.npz")
    with zipfile.ZipFile(tmp_path / "zip.npz", "w") as z:
        z.writestr("tokens.npy", b"garbage")
    with pytest.raises(ValueError, match="zip.npz is not a valid trajectory pool"):
        P.load(tmp_path / "zip.npz")
    with pytest.raises(FileNotFoundError, match="pool file not found: .*missing.npz"):
        P.load(tmp_path / "missing.npz")


def pool_trainer(out, pool_path, steps=6, seed=3, max_size=3, task="addition"):
    cfg = TrainConfig(steps=steps, batch_size=4, lr=3e-3, warmup=2, seed=seed, ckpt_every=2, train_max_size=max_size,
                      pool=str(pool_path))
    return Trainer(get_task("addition"), "mamba", TINY, cfg, out, progress=False,
                   run_info={"task": {"name": task, "mode": "interactive", "options": {}}})


def test_a_trainer_draws_from_the_pool_and_resumes_exactly(addition_pool, tmp_path, monkeypatch):
    _, built, path = addition_pool
    monkeypatch.setattr(type(get_task("addition")), "trajectories",
                        lambda *a, **k: pytest.fail("built a fresh trajectory"))
    whole = pool_trainer(tmp_path / "whole", path)
    whole.run()
    assert whole.meta["pool"] == built.identity()
    other_seed = pool_trainer(tmp_path / "seed4", path, seed=4)
    other_seed.run()
    assert not torch.equal(whole.model.embedding.weight, other_seed.model.embedding.weight)
    cut = pool_trainer(tmp_path / "cut", path)
    run_killed_after(cut, 3)
    resumed = pool_trainer(tmp_path / "cut", path, seed=99)  # the draws' state comes from the checkpoint
    resumed.load(tmp_path / "cut" / CHECKPOINT)
    resumed.run()
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)["pool"] == built.identity()


def test_a_pool_is_checked_against_the_run(addition_pool, tmp_path):
    config, _, path = addition_pool
    with pytest.raises(ValueError, match="pool: built for task .*'addition'.*, not this run's .*'coding'"):
        pool_trainer(tmp_path / "a", path, task="coding")
    with pytest.raises(ValueError, match="built from training sizes up to 3, but the run trains up to 5"):
        pool_trainer(tmp_path / "b", path, max_size=5)
    pool_trainer(tmp_path / "c", path, steps=2).run()
    other = P.save(P.build_pool(config, 8, seed=9, train_max_size=3), tmp_path / "other.npz")
    with pytest.raises(ValueError, match="was trained from pool .*, not .*'seed': 9"):
        pool_trainer(tmp_path / "c2", other, steps=2).load(tmp_path / "c" / CHECKPOINT)


def test_cli_builds_a_pool_and_trains_from_it(tmp_path, capsys):
    assert main(["pool", "--config", "addition", "--episodes", "20", "--train-max-size", "2", "--out",
                 str(tmp_path / "p.npz"), "--quiet"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["episodes"] == 20 and built["train_max_size"] == 2 and P.load(tmp_path / "p.npz").meta["digest"] == built["digest"]
    # The config trains up to 5: the pool (up to 2) is refused, in one line.
    with pytest.raises(SystemExit):
        main(["train", "--config", "addition", "--steps", "1", "--pool", str(tmp_path / "p.npz"), "--quiet"])
    assert "built from training sizes up to 2, but the run trains up to 5" in capsys.readouterr().err


def test_reproduce_builds_one_pool_per_mode_before_the_runs_and_every_run_shares_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    builds = []
    build = P.build_pool
    monkeypatch.setattr(P, "build_pool", lambda *a, **k: builds.append(a[0]["task"]["mode"]) or build(*a, **k))

    def sequential(jobs, *options, **more):
        assert builds == ["interactive", "cot"]  # every pool is built before the first run trains
        return [R.run_one(**job, progress=False) for job in jobs]

    monkeypatch.setattr(R, "run_parallel", sequential)
    args = dict(only=[("mamba", "interactive"), ("gru", "interactive"), ("mamba", "cot")], steps=2, sizes=[2], n=2,
                pool_episodes=12)
    curve = R.reproduce("addition", "cpu", [0, 1], tmp_path / "out", **args)
    pools = {(r["model"], r["mode"], r["seed"]): r["pool"] for r in curve["runs"]}
    assert len(pools) == 6 and {p["episodes"] for p in pools.values()} == {12}
    assert len({json.dumps(p, sort_keys=True) for p in pools.values()}) == 2  # one per mode
    assert {p["task"]["mode"] for p in pools.values()} == {"interactive", "cot"}
    assert len(list((tmp_path / "runs/reproduce-addition-cpu").glob("pool-*.npz"))) == 2
    assert all(r["train"]["pool"].endswith(".npz") for r in curve["runs"])
    # The same command again (e.g. to resume stopped runs) reuses the pools: nothing is rebuilt.
    R.reproduce("addition", "cpu", [0, 1], tmp_path / "out2", **args)
    assert builds == ["interactive", "cot"]
