"""`ssm-tools reproduce`. The slow test is the paper's central claim at CPU scale: a tiny Mamba trained
on 1..5-digit additions WITH the pointer-memory tool adds 50-digit numbers (10x the training length)
exactly; the same model trained to answer directly (no tool) does not (seeded; the `reproduce --scale
cpu` recipe). The others check the per-task settings, merging runs into one curve, the evaluation
budget and the errors, with 1-step trainings."""
import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from ssm_tools import reproduce as R
from ssm_tools.cli import main
from ssm_tools.config import make_task
from ssm_tools.evaluate import evaluate
from ssm_tools.train import load_checkpoint
from ssm_tools.reproduce import SCALES, plot_curve, reproduce, run_parallel, task_config

ROOT = Path(__file__).resolve().parents[1]
RECIPE = SCALES["cpu"]


@pytest.mark.slow
def test_tool_use_makes_tiny_mamba_generalize_10x_in_length(tmp_path):
    with_tools, no_tools = run_parallel([
        (task_config("addition", mode), "mamba", RECIPE["model_scale"], RECIPE["train"], 0, [50], 40,
         tmp_path / mode, "cpu") for mode in ("interactive", "direct")])
    assert with_tools["accuracy"]["50"] >= 0.95
    assert no_tools["accuracy"]["50"] <= 0.20


def test_plot_curve_writes_a_png_with_one_band_per_model(tmp_path, rng):
    sizes = [5, 10, 50]
    runs = [{"model": m, "mode": mode, "seed": s, "accuracy": {str(n): rng.random() for n in sizes}, "n": 10,
             "train": {"steps": 3}} for m, mode in (("mamba", "interactive"), ("mamba", "direct")) for s in (0, 1)]
    curve = {"task": "addition", "scale": "cpu", "train_sizes": [1, 5], "test_sizes": sizes, "n_per_size": 10,
             "size_label": "digits per operand", "seeds": [0, 1], "runs": runs}
    plot_curve(curve, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reproduce_rejects_unknown_scale_and_runs():
    with pytest.raises(ValueError, match="scale must be one of"):
        reproduce("addition", "huge", [0], "unused")
    with pytest.raises(ValueError, match="not in the cpu scale"):
        reproduce("addition", "cpu", [0], "unused", only=[("mamba", "telepathy")])
    with pytest.raises(FileNotFoundError, match="no experiment config"):
        task_config("sorting", "interactive")


# -- reproduce for every task: per-task sizes, merging runs into one curve, evaluation budgets ------
QUICK = ["--steps", "1", "--n", "2", "--seeds", "0"]


def in_process(jobs, workers=None, on_result=None):
    """run_parallel without the process pool (each spawned worker imports torch: seconds)."""
    threads, results = torch.get_num_threads(), []
    try:
        for job in jobs:
            results.append(R.run_one(*job, threads=1, progress=False))
            if on_result is not None:
                on_result(results[-1])
        return results
    finally:
        torch.set_num_threads(threads)


def test_cli_reproduce_multiplication_writes_curve_and_merges_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the runs' checkpoints go to ./runs
    out = tmp_path / "curve"
    base = ["reproduce", "multiplication_nx1", "--out", str(out), "--runs", "mamba:interactive"]
    assert main(base + QUICK + ["--sizes", "10"]) == 0  # through the real process pool once
    curve = json.loads((out / "curve.json").read_text())
    assert {"task", "scale", "command", "commands", "device", "size_label", "train_sizes", "test_sizes",
            "n_per_size", "seeds", "train", "models", "runs"} <= set(curve)
    assert (curve["task"], curve["train_sizes"], curve["test_sizes"], curve["n_per_size"]) == \
        ("multiplication_nx1", [1, 10], [10], 2)
    assert curve["train"]["steps"] == 1 and curve["train"]["train_max_size"] == 10
    run, = curve["runs"]
    assert {"train_seconds", "eval_seconds", "eval_seconds_per_size", "test_sizes", "n", "command",
            "skipped_sizes", "max_eval_seconds"} <= set(run)
    assert (run["model"], run["mode"], run["seed"], run["test_sizes"], run["skipped_sizes"]) == \
        ("mamba", "interactive", 0, [10], [])
    assert 0 <= run["accuracy"]["10"] <= 1

    monkeypatch.setattr(R, "run_parallel", in_process)
    # Another model and seed join the curve, with larger sizes whose evaluation the budget skips.
    assert main(base[:-1] + ["gru:interactive", "--merge", "--max-eval-seconds", "1e-9", "--sizes", "10,20,50"]
                + QUICK[:-1] + ["1"]) == 0
    # The first run again with another n: replaced in place, not added.
    assert main(base + QUICK[:2] + ["--n", "3", "--seeds", "0", "--sizes", "10", "--merge"]) == 0
    curve = json.loads((out / "curve.json").read_text())
    assert [(r["model"], r["seed"], r["n"]) for r in curve["runs"]] == [("mamba", 0, 3), ("gru", 1, 2)]
    assert curve["test_sizes"] == [10, 20, 50] and curve["seeds"] == [0, 1] and curve["n_per_size"] is None
    gru = curve["runs"][1]
    assert gru["accuracy"]["20"] is None and gru["accuracy"]["50"] is None and gru["skipped_sizes"] == [20, 50]
    assert gru["eval_seconds_per_size"]["50"] is None and gru["accuracy"]["10"] is not None
    assert set(curve["models"]) == {"mamba", "gru"} and len(curve["commands"]) == 3
    assert (out / "command.txt").read_text().splitlines() == curve["commands"]
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A run trained with another recipe joins too: each run keeps its own, the curve's is then null,
    # and the legend says how long each line trained. (Its old checkpoint would refuse the new recipe.)
    shutil.rmtree(tmp_path / "runs/reproduce-multiplication_nx1-cpu/mamba-interactive-seed0")
    assert main(base + ["--steps", "2", "--n", "2", "--seeds", "0", "--sizes", "10", "--merge"]) == 0
    curve = json.loads((out / "curve.json").read_text())
    assert [(r["model"], r["train"]["steps"]) for r in curve["runs"]] == [("mamba", 2), ("gru", 1)]
    assert curve["train"] is None
    # Without --merge the curve is replaced (the finished 2-step run is only evaluated again).
    assert main(base + ["--steps", "2", "--n", "2", "--seeds", "0", "--sizes", "10"]) == 0
    assert len(json.loads((out / "curve.json").read_text())["runs"]) == 1


def test_reproduce_tasks_have_their_sizes_and_modes(tmp_path, monkeypatch):
    assert R.TASKS["addition"]["sizes"]["cpu"] == [5, 10, 20, 50, 100]  # results/addition, the README
    assert R.TASKS["multiplication_nx1"]["sizes"]["paper"][-1] == 1000
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(R, "run_parallel", lambda *jobs, **options: pytest.fail("should not train"))
    with pytest.raises(ValueError, match=r"task must be one of \['addition', 'coding', 'hanoi_iterative', "):
        R.reproduce("sorting", "cpu", [0], "unused")
    # A task whose cpu scale would take hours says so, and where to go instead.
    with pytest.raises(ValueError, match=r"hanoi_iterative has no cpu scale: an 8-disk .* use --scale paper"):
        R.reproduce("hanoi_iterative", "cpu", None, "unused")
    with pytest.raises(ValueError, match=r"scale must be one of \['cpu', 'paper'\], got 'gpu'"):
        R.reproduce("multiplication_nx1", "gpu", [0], "unused")
    # Multiplication has no "direct" mode: not in its runs.
    with pytest.raises(ValueError, match=r"not in the paper scale for multiplication_nx1; choose from .*mistral"):
        R.reproduce("multiplication_nx1", "paper", [0], "unused", only=[("mamba", "direct")])
    with pytest.raises(ValueError, match=r"test size \(digits\) must be an integer >= 1"):
        R.reproduce("multiplication_nx1", "cpu", [0], "unused", sizes=[0, 10])
    with pytest.raises(ValueError, match="max_eval_seconds must be positive"):
        R.reproduce("multiplication_nx1", "cpu", [0], "unused", max_eval_seconds=0)
    (tmp_path / "add").mkdir()
    (tmp_path / "add" / "curve.json").write_text((ROOT / "results/addition/curve.json").read_text())
    with pytest.raises(ValueError, match="its task is 'addition', this call's is 'multiplication_nx1'"):
        R.reproduce("multiplication_nx1", "cpu", [0], tmp_path / "add", merge=True)


def test_train_time_budget_stops_then_the_same_command_resumes(tmp_path, monkeypatch):
    """A run out of training time is left out of the curve and listed as unfinished; the same call
    again resumes its checkpoint (one more step each time with a zero budget), then evaluates."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(R, "run_parallel", lambda jobs, *options, **more: [R.run_one(*job, progress=False)
                                                                          for job in jobs])
    args = dict(only=[("mamba", "interactive")], steps=3, sizes=[3], n=4)
    for step in (1, 2):
        curve = R.reproduce("addition", "cpu", [0], tmp_path / "out", max_train_seconds=0.0, **args)
        assert curve["runs"] == [] and curve["unfinished"][0]["stopped"] == step
    curve = R.reproduce("addition", "cpu", [0], tmp_path / "out", max_train_seconds=0.0, **args)
    (run,) = curve["runs"]
    assert curve["unfinished"] == [] and run["accuracy"].keys() == {"3"} and run["train_seconds"] > 0
    log = (tmp_path / "runs/reproduce-addition-cpu/mamba-interactive-seed0/log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in log] == ["step", "1", "2", "3"]
    # Another recipe does not resume it, and that is found before any run trains (here a GRU, first).
    monkeypatch.setattr(R, "run_parallel", lambda jobs: pytest.fail("trained before checking the run folders"))
    with pytest.raises(ValueError, match="mamba-interactive-seed0/checkpoint.pt was trained with .*'steps': 3"):
        R.reproduce("addition", "cpu", [0], tmp_path / "out",
                    **{**args, "steps": 5, "only": [("gru", "interactive"), ("mamba", "interactive")]})


@pytest.mark.parametrize("argv, words", [
    (["reproduce", "multiplication_nx1", "--sizes", "0"], "test size (digits) must be an integer >= 1"),
    (["reproduce", "multiplication_nx1", "--n", "0"], "--n must be positive"),
    (["reproduce", "multiplication_nx1", "--runs", "mamba"], "model:mode pairs"),
    (["reproduce", "multiplication_nx3"], "invalid choice"),
])
def test_cli_reproduce_errors_are_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and words in err[-1] and "Traceback" not in "".join(err)


@pytest.mark.parametrize("path", sorted(ROOT.glob("results/**/curve.json")), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_curves_in_results_merge_and_plot(tmp_path, path):
    """Every curve under results/ is in the current format: runs join it, and it plots."""
    old = json.loads(path.read_text())
    header = {**{k: old[k] for k in ("task", "scale", "device", "train", "train_sizes", "models", "size_label")},
              "command": f"ssm-tools reproduce {old['task']} --merge"}
    curve = R.summarize(R.merge_curves(old, header))
    assert curve["test_sizes"] == old["test_sizes"] and curve["n_per_size"] == old["n_per_size"]
    assert [R.run_key(r) for r in curve["runs"]] == [R.run_key(r) for r in old["runs"]]
    assert curve["commands"] == old["commands"] + [header["command"]]
    R.plot_curve(curve, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").is_file()


class Sleeper:
    """A task whose episodes take 5 ms per size unit to evaluate (evaluate_size patched below)."""
    def max_steps(self, size):
        return size


@pytest.mark.parametrize("fixed_state, evaluated", [(True, [10, 20]), (False, [10])])
def test_eval_budget_skips_sizes_predicted_to_overrun(fixed_state, evaluated, monkeypatch, capsys):
    monkeypatch.setattr(R, "evaluate_size_many", lambda models, task, size, n, device: (
        time.sleep(0.005 * size), [{"accuracy": 1.0, "correct": n}] * len(models))[1])
    model = type("M", (), {"fixed_size_state": fixed_state})()
    # 10: 0.05 s; 20 predicted 0.1 s (fixed state, total 0.15 <= 0.2) or 0.2 s (quadratic: over);
    # 40 predicted 0.2 s after 0.15 spent: over.
    result, = R.evaluate_within([model], Sleeper(), [40, 10, 20], 1, "cpu", max_seconds=0.2)
    assert [int(s) for s, a in result["accuracy"].items() if a is not None] == evaluated
    assert result["skipped_sizes"] == [s for s in (10, 20, 40) if s not in evaluated]
    assert all(result["accuracy"][str(s)] is None for s in result["skipped_sizes"])
    assert set(result["skip_reasons"]) == {str(s) for s in result["skipped_sizes"]}
    assert all("evaluation budget of 0 s" in why for why in result["skip_reasons"].values())
    # Each evaluated size is logged as it finishes (a log cut off by a time limit shows how far it got).
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines()] == \
        [f"evaluated size {s}" for s in evaluated]
    assert R.evaluate_within([model], Sleeper(), [10, 20, 40], 1, "cpu")[0]["skipped_sizes"] == []


def test_a_run_at_zero_is_not_decoded_at_larger_sizes(monkeypatch, tmp_path):
    """stop_after_zero: the run that scores 0/n at 20 is skipped at 40 and 80, with that reason, while
    the other run of the joint evaluation goes on alone; without the option both run every size."""
    calls = []

    def fake(models, task, size, n, device):
        calls.append((size, [m.name for m in models]))
        return [{"accuracy": c / n, "correct": c} for c in (0 if m.name == "a" and size >= 20 else 1 for m in models)]

    monkeypatch.setattr(R, "evaluate_size_many", fake)
    models = [type("M", (), {"fixed_size_state": True, "name": name})() for name in "ab"]
    a, b = R.evaluate_within(models, Sleeper(), [10, 20, 40, 80], 2, "cpu", stop_after_zero=True)
    assert calls == [(10, ["a", "b"]), (20, ["a", "b"]), (40, ["b"]), (80, ["b"])]
    assert a["accuracy"] == {"10": 0.5, "20": 0.0, "40": None, "80": None} and a["zero_at"] == 20
    assert a["skipped_sizes"] == [40, 80] and a["skip_reasons"] == {"40": "0/2 at size 20", "80": "0/2 at size 20"}
    assert b["skipped_sizes"] == [] and "zero_at" not in b and b["stop_after_zero"]
    calls.clear()
    assert R.evaluate_within(models, Sleeper(), [10, 20, 40], 2, "cpu")[0]["skipped_sizes"] == []
    assert calls[-1] == (40, ["a", "b"])
    # The plot draws the undecoded sizes (crosses at 0) beside a budget-skipped run.
    runs = [{"model": "mamba", "mode": "interactive", "seed": s, "n": 2, "train": {"steps": 1}, **r}
            for s, r in enumerate((a, b))]
    curve = {"task": "addition", "scale": "paper", "train_sizes": [1, 5], "n_per_size": 2, "size_label": "digits",
             "seeds": [0, 1], "runs": runs}
    plot_curve(curve, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert R.zero_skipped(a) == [40, 80] and R.zero_skipped(b) == []


def test_fixed_state_runs_are_evaluated_jointly_as_each_alone(tmp_path, monkeypatch):
    """With joint_eval the Mamba and GRU runs train, then are evaluated in one rollout per size from
    their checkpoints: each run's accuracies are those of evaluate() on its checkpoint alone; a run at
    0/n is recorded as skipped at the larger size; the Transformer run is evaluated on its own."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(R, "run_parallel", in_process)
    joint = []
    real = R.evaluate_jointly
    monkeypatch.setattr(R, "evaluate_jointly", lambda records, *a, **k: (joint.append(len(records)), real(records, *a, **k))[1])
    runs = [("mamba", "interactive"), ("gru", "interactive"), ("pythia", "interactive")]
    curve = R.reproduce("addition", "cpu", [0], tmp_path / "out", only=runs, sizes=[2, 4], n=2, steps=1,
                        joint_eval=True, stop_after_zero=True, workers=2)
    assert joint == [2] and curve["joint_eval"] and curve["stop_after_zero"]
    assert [(r["model"], r["seed"]) for r in curve["runs"]] == [(m, s) for m, _ in runs for s in [0]]
    for r in curve["runs"]:
        assert ("evaluated_jointly" in r) == (r["model"] != "pythia")
        model, _ = load_checkpoint(tmp_path / f"runs/reproduce-addition-cpu/{r['model']}-interactive-seed{r['seed']}")
        alone = evaluate(model, make_task(task_config("addition", "interactive")), [2, 4], 2)["accuracy"]
        assert r["accuracy"]["2"] == alone[2]
        if alone[2] == 0:  # 1 training step: no run is right yet
            assert r["accuracy"]["4"] is None and r["skip_reasons"] == {"4": "0/2 at size 2"}
        else:
            assert r["accuracy"]["4"] == alone[4]
    assert json.loads((tmp_path / "out/curve.json").read_text())["runs"] == curve["runs"]


def test_each_mode_is_evaluated_jointly_once_its_last_run_has_trained(tmp_path, monkeypatch):
    """Joint evaluation per mode, started when the mode's last fixed-state run comes back (trained,
    stopped or failed), with the runs that trained; the Transformer run was evaluated in its worker."""
    calls = []

    def fake_parallel(jobs, workers=None, on_result=None):
        results = []
        for config, model, _, _, seed, *rest in jobs:
            key = {"model": model, "mode": config["task"]["mode"], "seed": seed}
            assert rest[-1] == (model == "pythia")  # evaluate_now: only the Transformer in its worker
            if model == "pythia":
                key.update(test_sizes=[7], n=1, accuracy={"7": 0.0})
            elif (model, seed) == ("mamba", 1) and key["mode"] == "interactive":
                key.update(stopped=3, steps=9)
            else:
                key.update(pending=f"runs/{model}-{seed}")
            results.append(key)
            on_result(key)
        return results

    def fake_joint(records, config, sizes, n, device, **budget):
        calls.append((config["task"]["mode"], [(r["model"], r["seed"]) for r in records], budget["stop_after_zero"]))
        return [{**{k: v for k, v in r.items() if k != "pending"}, "test_sizes": sizes, "n": n,
                 "accuracy": {str(s): 1.0 for s in sizes}, "evaluated_jointly": len(records)} for r in records]

    monkeypatch.setattr(R, "run_parallel", fake_parallel)
    monkeypatch.setattr(R, "evaluate_jointly", fake_joint)
    curve = R.reproduce("hanoi_recursive", "paper", [0, 1], tmp_path / "out", device="cuda", workers=4, sizes=[7])
    # Jobs come back in the order mamba interactive, mamba single turn, LSTM, Pythia: single turn ends first.
    assert calls == [("single_turn", [("mamba", 0), ("mamba", 1)], True),
                     ("interactive", [("mamba", 0), ("lstm", 0), ("lstm", 1)], True)]
    assert [r["model"] for r in curve["unfinished"]] == ["mamba"]
    assert sorted((r["model"], r["mode"], r["seed"]) for r in curve["runs"]) == sorted(
        [("mamba", "interactive", 0), ("lstm", "interactive", 0), ("lstm", "interactive", 1),
         ("mamba", "single_turn", 0), ("mamba", "single_turn", 1), ("pythia", "interactive", 0),
         ("pythia", "interactive", 1)])
    assert curve["joint_eval"] and curve["stop_after_zero"]
    assert not any("pending" in r for r in curve["runs"])


def test_long_episode_tasks_have_their_runs_seeds_and_models(tmp_path, monkeypatch):
    """Hanoi trains every Mamba seed of Figure 5's view (5) and one of each baseline, with the small
    models of the GPU scale; the curve is written as each run ends (a call cut short keeps them)."""
    seen, out = [], tmp_path / "hanoi"

    def fake_parallel(jobs, workers=None, on_result=None):
        results = []
        for config, model, sizes_of_model, train, seed, sizes, n, *_ in jobs:
            seen.append((config["task"]["mode"], model, sizes_of_model, seed))
            results.append({"model": model, "mode": config["task"]["mode"], "seed": seed, "test_sizes": sizes,
                            "n": n, "accuracy": {str(s): 1.0 for s in sizes}})
            on_result(results[-1])
            curve = json.loads((out / "curve.json").read_text())
            assert len(curve["runs"]) == len(results)  # written before the next run ends
        return results

    monkeypatch.setattr(R, "run_parallel", fake_parallel)
    curve = R.reproduce("hanoi_iterative", "paper", None, out, device="cuda", workers=4)
    mamba = [s for mode, m, _, s in seen if (m, mode) == ("mamba", "interactive")]
    assert mamba == [0, 1, 2, 3, 4] and len(seen) == 9  # + 2 single-turn Mamba, 1 LSTM, 1 Pythia
    assert all(sizes == R.SMALL_MODELS[m] for _, m, sizes, _ in seen)
    assert curve["test_sizes"] == [8, 9, 10, 11, 12] and curve["models"]["mamba"] == R.SMALL_MODELS["mamba"]
    assert curve["every_seed"]  # the plot draws each seed's line too
    assert (out / "curve.png").is_file()
    # --seeds replaces every run's seeds.
    seen.clear()
    out = tmp_path / "coding"
    R.reproduce("coding", "paper", [3], out, device="cuda", workers=2)
    assert {s for *_, s in seen} == {3} and {(mode, m) for mode, m, *_ in seen} == \
        {("interactive", "mamba"), ("single_turn", "mamba"), ("interactive", "pythia")}


def test_a_failing_run_is_reported_and_the_others_still_join_the_curve(tmp_path, monkeypatch):
    # A run that raises in its worker process (here: no such model) comes back as {"error": ...}.
    config = task_config("hanoi_recursive", "interactive")
    (failed,) = run_parallel([(config, "mamba", {"d_model": -1}, {"steps": 1}, 0, [2], 1, tmp_path / "x", "cpu")])
    assert (failed["model"], failed["mode"], failed["seed"]) == ("mamba", "interactive", 0)
    assert "d_model" in failed["error"]
    # Such a run is listed under "failed"; the runs that ended are in the curve.
    def fake_parallel(jobs, workers=None, on_result=None):
        return [{**failed, "seed": 1} if job[4] == 1 else
                {"model": "mamba", "mode": "interactive", "seed": job[4], "test_sizes": [7], "n": 1,
                 "accuracy": {"7": 1.0}} for job in jobs]

    monkeypatch.setattr(R, "run_parallel", fake_parallel)
    curve = R.reproduce("hanoi_recursive", "paper", None, tmp_path / "out", device="cuda", workers=2,
                        only=[("mamba", "interactive")])
    assert [r["seed"] for r in curve["runs"]] == [0, 2, 3, 4] and [r["seed"] for r in curve["failed"]] == [1]
    assert json.loads((tmp_path / "out/curve.json").read_text())["failed"][0]["error"] == failed["error"]


def test_runs_sharing_a_gpu_evaluate_one_at_a_time(tmp_path):
    import multiprocessing

    lock = tmp_path / "evaluation-cuda.lock"
    ctx = multiprocessing.get_context("spawn")
    log = tmp_path / "log"
    with R.one_at_a_time(lock):  # held here: the other process waits for it
        worker = ctx.Process(target=_hold_and_log, args=(lock, log))
        worker.start()
        time.sleep(1.0)
        _append(log, "first released")
    worker.join(30)
    assert log.read_text().splitlines() == ["first released", "second held"]


def _hold_and_log(lock, log):
    with R.one_at_a_time(lock):
        _append(log, "second held")


def _append(path, line):
    with open(path, "a") as f:
        f.write(line + "\n")
