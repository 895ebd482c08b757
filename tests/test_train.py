"""Training loop, checkpoint/resume, interactive evaluation and the CLI."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import OracleModel, run_killed_after
from ssm_tools.cli import main
from ssm_tools.config import validate
from ssm_tools.evaluate import evaluate
from ssm_tools.models import build_model
from ssm_tools.tasks import get_task
from ssm_tools.tasks.base import expected_stream
from ssm_tools import vocab as V
from ssm_tools.train import CHECKPOINT, TrainConfig, Trainer, load_checkpoint, lr_factor, masked_loss, pad_batch

TINY = dict(vocab_size=128, d_model=16, n_layers=1, d_state=4)


def test_masked_loss_counts_only_model_tokens():
    torch.manual_seed(0)
    model = build_model("mamba", **TINY)
    tokens = torch.randint(10, 100, (3, 12))
    mask = torch.rand(3, 12) < 0.5
    mask[0, 5] = True
    logits = model(tokens[:, :-1])
    expected = F.cross_entropy(logits[mask[:, 1:]], tokens[:, 1:][mask[:, 1:]])
    torch.testing.assert_close(masked_loss(model, tokens, mask), expected)
    # A target the mask excludes (not the last position, which is never an input) does not matter.
    j = int((~mask[0, 1:-1]).nonzero()[0]) + 1
    changed = tokens.clone()
    changed[0, j] = 3 if tokens[0, j] != 3 else 4
    logits_changed = model(changed[:, :-1])
    loss_changed = F.cross_entropy(logits_changed[mask[:, 1:]], changed[:, 1:][mask[:, 1:]])
    torch.testing.assert_close(masked_loss(model, changed, mask), loss_changed)
    with pytest.raises(ValueError, match="loss_mask marks no model token"):
        masked_loss(model, tokens, torch.zeros_like(mask))
    # A data-parallel rank's share: its token sum over the whole batch's count (here 3x its own).
    count = int(mask[:, 1:].sum())
    torch.testing.assert_close(masked_loss(model, tokens, mask, 3 * count), expected / 3)
    empty = masked_loss(model, tokens, torch.zeros_like(mask), 10)  # rows with nothing to learn
    assert empty.item() == 0.0 and empty.requires_grad


@pytest.mark.parametrize("name", ["mamba", "pythia", "mistral", "lstm"])
def test_padding_the_batch_leaves_the_loss_and_gradients_unchanged(name):
    """pad_batch (used on GPUs, for aligned rows) only appends unlearned PAD positions."""
    torch.manual_seed(0)
    model = build_model(name, vocab_size=128, d_model=16, n_layers=1, **({"d_state": 4} if name == "mamba" else {})).double()
    tokens = torch.randint(10, 100, (3, 14))
    mask = torch.rand(3, 14) < 0.6
    mask[:, -1] = True  # the last target is learned: padding must not shift or drop it
    padded, padded_mask = pad_batch(tokens, mask, 8)
    assert padded.shape == (3, 17) and (padded.shape[1] - 1) % 8 == 0
    assert torch.equal(padded[:, :14], tokens) and (padded[:, 14:] == V.PAD).all()
    assert not padded_mask[:, 14:].any()
    assert pad_batch(padded, padded_mask, 8)[0] is padded  # already a multiple: unchanged
    loss = masked_loss(model, tokens, mask)
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    loss_p = masked_loss(model, padded, padded_mask)
    grads_p = torch.autograd.grad(loss_p, list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(loss_p, loss, rtol=1e-12, atol=1e-12)
    for g, gp in zip(grads, grads_p):
        if g is None:
            assert gp is None or not gp.any()
        else:
            torch.testing.assert_close(gp, g, rtol=1e-9, atol=1e-12)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(steps=100, warmup=10, min_lr_ratio=0.1)
    factors = [lr_factor(s, cfg) for s in range(101)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(factors[:10], factors[1:10]))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert factors[100] == pytest.approx(0.1) and factors[55] == pytest.approx(0.55)


@pytest.mark.parametrize("field, value", [("steps", 0), ("batch_size", -2), ("lr", 0.0), ("warmup", -1),
                                           ("train_max_size", 0), ("eval_n", 1.5)])
def test_train_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def make_trainer(out, steps=6, seed=3):
    cfg = TrainConfig(steps=steps, batch_size=4, lr=3e-3, warmup=2, seed=seed, ckpt_every=2)
    return Trainer(get_task("addition"), "mamba", TINY, cfg, out, progress=False,
                   run_info={"task": {"name": "addition", "mode": "interactive", "options": {}}})


def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path):
    whole = make_trainer(tmp_path / "whole")
    whole.run()
    interrupted = make_trainer(tmp_path / "cut")
    run_killed_after(interrupted, 3)  # its last checkpoint is at step 2 (ckpt_every=2)
    assert torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)["step"] == 2
    resumed = make_trainer(tmp_path / "cut", seed=99)  # a fresh process; state comes from the file
    resumed.load(tmp_path / "cut" / CHECKPOINT)
    assert resumed.step == 2
    resumed.run()
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    sa, sb = whole.opt.state_dict()["state"], resumed.opt.state_dict()["state"]
    assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)
    assert whole.sched.get_last_lr() == resumed.sched.get_last_lr()
    assert not list((tmp_path / "cut").glob("*.tmp"))  # written atomically
    log = (tmp_path / "cut" / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log] == ["step", "1", "2", "3", "4", "5", "6"]


def test_time_budget_checkpoints_and_a_later_run_finishes_identically(tmp_path):
    whole = make_trainer(tmp_path / "whole")
    whole.run()
    first = make_trainer(tmp_path / "budget")
    row = first.run(max_seconds=0.0)  # out of time after the first step: checkpoint, stop
    assert row["stopped"] and first.step == 1
    assert torch.load(tmp_path / "budget" / CHECKPOINT, weights_only=True)["step"] == 1
    later = make_trainer(tmp_path / "budget", seed=99)
    later.load(tmp_path / "budget" / CHECKPOINT)
    # The training time and last loss so far come with the checkpoint.
    assert later.train_seconds == first.train_seconds > 0 and later.last_loss == first.last_loss == row["loss"]
    assert "stopped" not in later.run()
    for (name, a), b in zip(whole.model.state_dict().items(), later.model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("corrupt", [False, True])
def test_evaluate_grades_interactive_episodes(corrupt):
    task = get_task("addition")
    size, n = 12, 6
    rng = np.random.default_rng([1234, size])  # the same instances evaluate() draws
    insts = [task.sample(rng, size) for _ in range(n)]
    model = OracleModel([task.prompt(x) + expected_stream(task.script(x)) for x in insts], corrupt)
    result = evaluate(model, task, [size], n)
    assert result["accuracy"] == {size: 0.0 if corrupt else 1.0}
    assert result["per_size"][size]["finished"] == n


def test_evaluate_rejects_bad_sizes():
    model = build_model("mamba", **TINY)
    with pytest.raises(ValueError, match="sizes must be"):
        evaluate(model, get_task("addition"), [0, 5], 4)
    with pytest.raises(ValueError, match="n must be"):
        evaluate(model, get_task("addition"), [5], 0)


def test_cli_train_resume_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--config", "addition", "--out", str(out), "--batch-size", "4", "--quiet"]
    assert main(base + ["--steps", "2"]) == 0
    assert main(base + ["--steps", "4", "--resume"]) == 0
    model, meta = load_checkpoint(out)
    assert meta["step"] == 4 and meta["model"] == "mamba" and meta["run"]["task"]["name"] == "addition"
    capsys.readouterr()
    report = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(out), "--sizes", "3,7", "--n", "5", "--out", str(report)]) == 0
    data = json.loads(report.read_text())
    assert set(data["accuracy"]) == {"3", "7"} and data["per_size"]["7"]["n"] == 5
    assert data["command"].startswith("ssm-tools evaluate")


@pytest.mark.parametrize("argv, words", [
    (["train", "--config", "missing.toml"], "missing.toml"),
    (["train", "--config", "addition", "--model", "bert"], "model must be one of"),
    (["train", "--config", "addition", "--steps", "0"], "--steps must be positive"),
    (["evaluate", "--checkpoint", "nowhere"], "checkpoint not found"),
    (["evaluate", "--checkpoint", "x", "--sizes", "5,a"], "comma-separated integers"),
    (["reproduce", "sorting"], "invalid choice"),
    (["bench", "nonexistent"], "unknown benchmark"),
])
def test_cli_errors_are_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ssm-tools") and words in err[-1] and "Traceback" not in "".join(err)


def test_cli_bench_says_it_needs_a_source_checkout(monkeypatch, capsys):
    from ssm_tools import cli

    assert main(["bench"]) == 0 and "dispatch" in capsys.readouterr().out  # this checkout's benchmarks
    monkeypatch.setattr(cli, "CHECKOUT", cli.CHECKOUT / "nowhere")  # as installed from a wheel
    with pytest.raises(SystemExit) as e:
        main(["bench"])
    assert e.value.code == 2 and "benchmarks/ of a source checkout" in capsys.readouterr().err


def test_cli_shows_bugs_with_their_traceback(monkeypatch):
    """A TypeError inside a command is a bug, not a usage error: it is not turned into one line."""
    from ssm_tools import cli

    monkeypatch.setattr(cli, "cmd_show", lambda args: len(None))
    with pytest.raises(TypeError):  # not SystemExit(2)
        main(["show", "addition"])


@pytest.mark.parametrize("section, value, words", [
    ("model", {"name": "bert"}, "[model] name must be one of"),
    ("model", {"scale": "huge"}, "[model] scale must be one of"),
    ("train", {"stepz": 3}, "[train] has unknown keys ['stepz']"),
    ("eval", {"n": 0}, "[eval] n must be a positive integer"),
    ("eval", {"sizes": []}, "[eval] sizes must be a non-empty list"),
])
def test_config_run_sections_are_validated(section, value, words):
    config = {"task": {"name": "addition"}, "sizes": {"train": [1, 5], "test": [5]}, section: value}
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        validate(config, "x.toml")
