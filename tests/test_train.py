"""Training loop, checkpoint/resume, interactive evaluation and the CLI."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import OracleModel, run_killed_after
from ssm_tools.cli import main
from ssm_tools.config import load_config, make_task, validate
from ssm_tools.evaluate import evaluate, exact_trajectory_size
from ssm_tools.models import build_model
from ssm_tools.tasks import get_task
from ssm_tools.tasks.base import expected_stream
from ssm_tools import vocab as V
from ssm_tools.train import (CHECKPOINT, GROUP_FRACTION, GROUP_MIN_SAVING, MAX_GROUPS, TrainConfig, Trainer,
                             length_groups, load_checkpoint, lr_factor, masked_loss, pack_batch, pack_rows, pad_batch,
                             padded_groups)

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


def task_batch(config_name, batch, seed):
    """A training batch of an experiment config's task (sizes up to its training maximum)."""
    config = load_config(config_name)
    transcript, _ = make_task(config).trajectories(np.random.default_rng(seed), [config["sizes"]["train"][1]] * batch,
                                                   train=True)
    return transcript.tokens, transcript.loss_mask, transcript.lengths


@pytest.mark.parametrize("config_name", ["addition", "multiplication_nx2"])
def test_packed_rows_give_the_padded_loss_and_gradients(config_name, seed):
    """The Trainer's packed batch of a tiny Mamba (float64) has the loss and every gradient of the
    padded batch of the same episodes: nothing learned across a boundary, no state carried over."""
    model = build_model("mamba", vocab_size=128, d_model=16, n_layers=2, d_state=4).double()
    tokens, mask, lengths = task_batch(config_name, 24, seed)
    packed, packed_mask, seq_idx = pack_batch(tokens, mask, lengths, 8)  # as the Trainer on a GPU
    assert packed.shape[0] < tokens.shape[0]  # the point: rows holding several episodes (boundaries inside)
    params = list(model.parameters())
    loss = masked_loss(model, tokens, mask)
    loss_p = masked_loss(model, packed, packed_mask, seq_idx=seq_idx)
    torch.testing.assert_close(loss_p, loss, rtol=1e-12, atol=1e-12)
    for g, gp in zip(torch.autograd.grad(loss, params), torch.autograd.grad(loss_p, params)):
        torch.testing.assert_close(gp, g, rtol=1e-10, atol=1e-13)


def test_pack_rows_places_every_episode_once(seed):
    tokens, mask, lengths = task_batch("addition", 20, seed)
    packed, packed_mask, seq_idx = pack_rows(tokens, mask, lengths, int(lengths.max()) + 5, 8)
    width = packed.shape[1]  # the fullest row's, aligned
    assert (width - 1) % 8 == 0 and (packed[:, width - 8:] != V.PAD).any() and seq_idx.dtype == torch.int32
    assert int(packed_mask[:, 1:].sum()) == int(mask[:, 1:].sum())  # the same learned positions
    episodes = []
    for row, row_mask, ids in zip(packed, packed_mask, seq_idx):
        starts = [0] + [t for t in range(1, width) if ids[t] != ids[t - 1]]
        for s0, s1 in zip(starts, starts[1:] + [width]):
            if s1 - s0 and not (row[s0:s1] == V.PAD).all():
                assert not row_mask[s0]  # a sequence's first token is never a target
                episodes.append(tuple(row[s0:s1].tolist()))
    assert sorted(episodes) == sorted(tuple(t[:n].tolist()) for t, n in zip(tokens, lengths))
    with pytest.raises(ValueError, match="width 3 is shorter than the longest episode"):
        pack_rows(tokens, mask, lengths, 3)


@pytest.mark.parametrize("name, pack, packs", [("mamba", True, True), ("mamba", False, False), ("lstm", True, False)])
def test_trainer_packs_rows_for_models_that_take_them(tmp_path, name, pack, packs):
    cfg = TrainConfig(steps=1, batch_size=16, seed=1, pack=pack)
    trainer = Trainer(get_task("addition"), name, {"vocab_size": 128, "d_model": 16, "n_layers": 1}, cfg, tmp_path,
                      progress=False)
    parts, ntok, learned = trainer.batch()  # padded: one part per length group
    assert all((seq_idx is not None) == packs for _, _, seq_idx in parts)
    assert sum(int(mask[:, 1:].sum()) for _, mask, _ in parts) == learned
    assert sum(int((tokens != V.PAD).sum()) for tokens, _, _ in parts) <= ntok
    rows = sum(tokens.shape[0] for tokens, _, _ in parts)
    assert len(parts) == 1 and rows < 16 if packs else rows == 16


def spread_batch(rng, lengths):
    """Random episodes of these lengths (1..~1000 tokens) as a padded batch: PAD after each, the
    loss mask random on the rest (never on an episode's first token), in a shuffled order."""
    lengths = torch.tensor(rng.permutation(lengths))
    width = int(lengths.max())
    tokens = torch.randint(10, 100, (len(lengths), width))
    mask = torch.rand(len(lengths), width) < 0.6
    beyond = torch.arange(width)[None, :] >= lengths[:, None]
    tokens[beyond], mask[beyond], mask[:, 0] = V.PAD, False, False
    return tokens, mask, lengths


# Five groups: the short episodes of the last would save too few positions in groups of their own.
SPREAD = [1000, 937, 700, 480, 260, 255, 120, 64, 33, 17, 9, 5, 2, 1]


@pytest.mark.parametrize("name", ["pythia", "mistral", "lstm", "gru"])
def test_length_groups_give_the_padded_loss_and_gradients(name, rng):
    """The Trainer's length groups of a batch spanning 1..1000 tokens (float64): their losses over the
    whole batch's learned count add up to the padded batch's loss, their gradients to its gradient
    (Mistral's window cuts the long episodes, not the short ones)."""
    sizes = {"window": 48} if name == "mistral" else {}
    model = build_model(name, vocab_size=128, d_model=16, n_layers=2, **sizes).double()
    tokens, mask, lengths = spread_batch(rng, SPREAD)
    parts = padded_groups(tokens, mask, lengths, 8)
    assert [t.shape[0] for t, _ in parts] == [2, 1, 1, 2, 8]
    assert sum(t.shape[0] * t.shape[1] for t, _ in parts) < tokens.numel() / 2  # the point: less padding
    params = list(model.parameters())
    loss = masked_loss(model, tokens, mask)
    grads = torch.autograd.grad(loss, params)
    learned = int(mask[:, 1:].sum())
    grouped = sum(masked_loss(model, t, m, learned) for t, m in parts)
    torch.testing.assert_close(grouped, loss, rtol=1e-12, atol=1e-12)
    for g, gg in zip(grads, torch.autograd.grad(grouped, params)):
        torch.testing.assert_close(gg, g, rtol=1e-10, atol=1e-13)


def test_length_groups_place_every_episode_once_longest_first(rng):
    for _ in range(50):
        lengths = np.exp(rng.uniform(0, np.log(8000), rng.integers(1, 40))).astype(int) + 1
        groups = length_groups(torch.tensor(lengths))
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))  # each episode once
        assert 1 <= len(groups) <= MAX_GROUPS
        runs = [[lengths[i] for i in g] for g in groups]
        assert all(r == sorted(r, reverse=True) for r in runs)  # longest first in a group ...
        assert all(a[-1] >= b[0] for a, b in zip(runs, runs[1:]))  # ... and across groups
        for k in range(1, len(runs)):  # a group starts below the fraction, saving enough positions
            rest = sum(map(len, runs[k:]))
            assert runs[k][0] < GROUP_FRACTION * runs[k - 1][0]
            assert (runs[k - 1][0] - runs[k][0]) * rest >= GROUP_MIN_SAVING * len(lengths) * max(lengths)
    # Batch order breaks ties; lengths within the fraction are one group, and so is a short episode
    # whose group would save little (below GROUP_MIN_SAVING).
    assert length_groups([8, 9, 8, 9, 7]) == [[1, 3, 0, 2, 4]]
    assert length_groups([100] * 19 + [10]) == [list(range(20))]
    assert length_groups([100] * 8 + [10] * 2) == [list(range(8)), [8, 9]]


def test_fit_seconds_sizes_the_run_and_it_is_the_run_of_those_steps(tmp_path):
    """A run sized to its time trains the steps its warmup's pace allows, records them, and is step
    for step the run of a recipe with that many steps from the start."""
    def trainer(steps, out):
        cfg = TrainConfig(steps=steps, batch_size=2, warmup=3, seed=3, train_max_size=3, dtype="float64")
        return Trainer(get_task("addition"), "mamba", {"vocab_size": 128, "d_model": 8, "n_layers": 1}, cfg, out,
                       progress=False)
    fitted = trainer(10 ** 6, tmp_path / "fit")
    fitted.run(fit_seconds=1.0)
    assert 3 < fitted.step < 10 ** 6 and fitted.cfg.steps == fitted.step
    _, meta = load_checkpoint(tmp_path / "fit")
    assert meta["train"]["steps"] == fitted.step
    plain = trainer(fitted.step, tmp_path / "plain")
    plain.run()
    for (name, a), b in zip(fitted.model.state_dict().items(), plain.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(steps=100, warmup=10, min_lr_ratio=0.1)
    factors = [lr_factor(s, cfg) for s in range(101)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(factors[:10], factors[1:10]))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert factors[100] == pytest.approx(0.1) and factors[55] == pytest.approx(0.55)


@pytest.mark.parametrize("field, value", [("steps", 0), ("batch_size", -2), ("lr", 0.0), ("warmup", -1),
                                           ("train_max_size", 0), ("eval_n", 1.5), ("pack", "yes"), ("group_lengths", 1),
                                           ("select_size", -1), ("select_every", 0), ("select_n", 2.0)])
def test_train_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def make_trainer(out, steps=6, seed=3, **recipe):
    cfg = TrainConfig(steps=steps, batch_size=4, lr=3e-3, warmup=2, seed=seed, ckpt_every=2, **recipe)
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


HANOI = {"name": "hanoi", "mode": "interactive", "options": {"variant": "recursive"}}


def hanoi_trainer(out, seed=3, **recipe):
    """A tiny Pythia (float64) on 1..5-disk recursive Hanoi: 30..1.9k-token episodes, several length groups."""
    cfg = TrainConfig(steps=4, batch_size=6, lr=3e-3, warmup=2, seed=seed, ckpt_every=2, train_max_size=5,
                      dtype="float64", **recipe)
    return Trainer(make_task({"task": HANOI}), "pythia", {"vocab_size": V.VOCAB_SIZE, "d_model": 16, "n_layers": 1},
                   cfg, out, progress=False, run_info={"task": HANOI})


def test_length_groups_train_the_padded_run_and_resume_exactly(tmp_path):
    grouped, padded = hanoi_trainer(tmp_path / "grouped"), hanoi_trainer(tmp_path / "padded", group_lengths=False)
    assert len(grouped.batch()[0]) > 1 and len(padded.batch()[0]) == 1  # the data RNG moves alike: reseed
    grouped, padded = hanoi_trainer(tmp_path / "grouped"), hanoi_trainer(tmp_path / "padded", group_lengths=False)
    grouped.run()
    padded.run()
    for (name, a), b in zip(padded.model.state_dict().items(), grouped.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=name)
    assert grouped.last_loss == pytest.approx(padded.last_loss, rel=1e-12)
    # Killed after step 3 (checkpoint at 2) and resumed by a trainer told to pad: it goes on grouped.
    cut = hanoi_trainer(tmp_path / "cut")
    run_killed_after(cut, 3)
    resumed = hanoi_trainer(tmp_path / "cut", seed=99, group_lengths=False)
    assert resumed.load(tmp_path / "cut" / CHECKPOINT)["group_lengths"] and resumed.cfg.group_lengths
    resumed.run()
    for (name, a), b in zip(grouped.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_checkpoint_from_before_length_groups_resumes_padded(tmp_path):
    padded = hanoi_trainer(tmp_path / "padded", group_lengths=False)
    padded.run()
    cut = hanoi_trainer(tmp_path / "cut", group_lengths=False)
    run_killed_after(cut, 3)
    path = tmp_path / "cut" / CHECKPOINT
    old = torch.load(path, weights_only=True)
    del old["train"]["group_lengths"]  # as written before the field existed
    torch.save(old, path)
    resumed = hanoi_trainer(tmp_path / "cut", seed=99)  # today's default: grouped
    assert resumed.load(path)["group_lengths"] is False and not resumed.cfg.group_lengths
    resumed.run()
    for (name, a), b in zip(padded.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.load(path, weights_only=True)["train"]["group_lengths"] is False  # recorded as trained


def scripted_scores(monkeypatch, scores: dict, kept: dict):
    """Checkpoint selection scored by step (`scores`: step -> (exact share, token accuracy)), the
    weights of each scored step (every 2nd, in order) copied into `kept`; the held-out episodes are
    not the test ones."""
    import ssm_tools.evaluate as E
    import ssm_tools.train as T

    def score(model, task, size, n, seed, device):
        assert (size, n, seed) == (9, 3, T.VALIDATION_SEED) and seed != E.TEST_SEED
        step = 2 * len(kept) + 2
        kept[step] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"exact_trajectory": scores[step][0], "token_accuracy": scores[step][1]}
    monkeypatch.setattr(T, "exact_trajectory_size", score)


@pytest.mark.parametrize("scores, best", [({2: (0.5, 0.9), 4: (0.75, 0.8), 6: (0.25, 1.0)}, 4),
                                          ({2: (0.5, 0.9), 4: (0.5, 0.95), 6: (0.5, 0.95)}, 4)])
def test_checkpoint_selection_keeps_the_best_step_and_resumes_exactly(tmp_path, monkeypatch, scores, best):
    """The best held-out score wins (its token accuracy breaks ties of the exact share, then the
    earlier step); the selected weights are that step's, in the checkpoint beside the last step's; a
    run stopped and resumed selects the same step and weights."""
    kept = {}
    scripted_scores(monkeypatch, scores, kept)
    whole = make_trainer(tmp_path / "whole", select_size=9, select_every=2, select_n=3)
    whole.run()
    assert whole.selection == {"scores": [[s, *scores[s]] for s in (2, 4, 6)], "best_step": best}
    model, meta = load_checkpoint(tmp_path / "whole")
    assert meta["selected_step"] == best and meta["step"] == 6
    for name, w in model.state_dict().items():
        assert torch.equal(w, kept[best][name]), name
    last, meta = load_checkpoint(tmp_path / "whole", weights="last")
    assert "selected_step" not in meta
    assert all(torch.equal(w, whole.model.state_dict()[k]) for k, w in last.state_dict().items())
    assert all(torch.equal(w, kept[best][k]) for k, w in whole.selected_model().state_dict().items())
    log = (tmp_path / "whole" / "log.csv").read_text().splitlines()
    assert [row.split(",")[-1] for row in log] == ["select", "", str(scores[2][0]), "", str(scores[4][0]), "",
                                                   str(scores[6][0])]
    kept.clear()
    cut = make_trainer(tmp_path / "cut", select_size=9, select_every=2, select_n=3)
    run_killed_after(cut, 5)  # the last checkpoint is at step 4, after two selections
    resumed = make_trainer(tmp_path / "cut", seed=99, select_size=9, select_every=2, select_n=3)
    resumed.load(tmp_path / "cut" / CHECKPOINT)
    assert resumed.selection["scores"] == [[s, *scores[s]] for s in (2, 4)]
    resumed.run()
    assert resumed.selection == whole.selection
    again, _ = load_checkpoint(tmp_path / "cut")
    assert all(torch.equal(w, model.state_dict()[k]) for k, w in again.state_dict().items())
    with pytest.raises(ValueError, match="weights must be 'selected' or 'last'"):
        load_checkpoint(tmp_path / "cut", weights="best")


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


@pytest.mark.parametrize("corrupt", [False, True])
@pytest.mark.parametrize("max_tokens", [1, 1 << 22])
def test_exact_trajectory_scores_what_the_interactive_evaluation_scores(corrupt, max_tokens):
    """Teacher forcing scores the same episodes as decoding through the loop, one pass per episode
    (max_tokens=1) or all in one."""
    task = get_task("addition")
    size, n = 12, 6
    rng = np.random.default_rng([1234, size])
    insts = [task.sample(rng, size) for _ in range(n)]
    model = OracleModel([task.prompt(x) + expected_stream(task.script(x)) for x in insts], corrupt)
    result = exact_trajectory_size(model, task, size, n, max_tokens=max_tokens)
    assert result["exact_trajectory"] == evaluate(model, task, [size], n)["accuracy"][size] == (0.0 if corrupt else 1.0)


def test_evaluate_rejects_bad_sizes():
    model = build_model("mamba", **TINY)
    with pytest.raises(ValueError, match="sizes must be"):
        evaluate(model, get_task("addition"), [0, 5], 4)
    with pytest.raises(ValueError, match="n must be"):
        evaluate(model, get_task("addition"), [5], 0)
    with pytest.raises(ValueError, match="precision must be one of float32, tf32, bfloat16, got 'fp16'"):
        evaluate(model, get_task("addition"), [5], 4, precision="fp16")


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
    assert main(["evaluate", "--checkpoint", str(out), "--sizes", "3", "--n", "5", "--exact-trajectory",
                 "--out", str(report)]) == 0
    data = json.loads(report.read_text())
    assert set(data["exact_trajectory"]) == {"3"} and "accuracy" not in data and data["per_size"]["3"]["n"] == 5
    assert main(["evaluate", "--checkpoint", str(out), "--sizes", "3", "--n", "5", "--precision", "bfloat16",
                 "--out", str(report)]) == 0
    data = json.loads(report.read_text())
    assert "--precision bfloat16" in data["command"] and data["per_size"]["3"]["n"] == 5
    # --option overrides the checkpoint's task options: one the task does not have is named.
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["evaluate", "--checkpoint", str(out), "--sizes", "3", "--n", "2", "--option", "bogus=1"])
    assert "bad option in ['bogus']" in capsys.readouterr().err


def test_a_mixture_checkpoint_is_graded_on_its_target_task(tmp_path, capsys):
    """The mixture trains on addition and multiplication; its [eval] task grades n x 2 multiplication."""
    out = tmp_path / "mix"
    assert main(["train", "--config", "mixture_add0.5", "--out", str(out), "--batch-size", "2", "--steps", "1",
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out), "--sizes", "2", "--n", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"]["name"] == "mixture"
    assert report["graded_task"] == "Multiplication(mode='interactive', second_digits=2)"


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
