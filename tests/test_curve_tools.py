"""The scripts that put a later GPU call's results on a committed curve: curve_merge.py (a later
call's runs) and curve_add_evaluations.py (checkpoints evaluated after the training call)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def script(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(model, mode, seed, acc, steps=10):
    sizes = [10, 20]
    return {"model": model, "mode": mode, "seed": seed, "n": 4, "test_sizes": sizes, "trained_steps": steps,
            "train": {"steps": steps, "seed": seed, "lr": 1e-3}, "accuracy": {str(s): a for s, a in zip(sizes, acc)},
            "exact_trajectory": {str(s): a for s, a in zip(sizes, acc)},
            "skipped_sizes": [s for s, a in zip(sizes, acc) if a is None],
            "skip_reasons": {str(s): "budget" for s, a in zip(sizes, acc) if a is None},
            "exact_trajectory_skipped_sizes": []}


def curve(runs, command, failed=(), **fields):
    return {"task": "addition", "scale": "paper", "device": "cuda", "train_sizes": [1, 5], "size_label": "digits",
            "models": {"mamba": {"d_model": 8}, "lstm": {"d_model": 8}}, "train": {}, "command": command,
            "commands": [command], "runs": list(runs), **({"failed": list(failed)} if failed else {}), **fields}


def test_merge_replaces_a_failed_run_keeps_the_others_and_every_command(tmp_path):
    merge = script("curve_merge")
    lost = {**run("lstm", "interactive", 0, [None, None]), "error": "CUDA out of memory"}
    old = curve([run("mamba", "interactive", 0, [1.0, 0.5])], "first", failed=[lost])
    new = curve([run("lstm", "interactive", 0, [0.25, 0.0]), run("mamba", "interactive", 1, [1.0, 1.0])], "second")
    path = tmp_path / "curve.json"
    path.write_text(json.dumps(old))
    sys.argv = ["curve_merge", str(path), str(tmp_path / "new.json")]
    (tmp_path / "new.json").write_text(json.dumps(new))
    merge.main()
    merged = json.loads(path.read_text())
    assert [(r["model"], r["seed"]) for r in merged["runs"]] == [("mamba", 0), ("mamba", 1), ("lstm", 0)]
    assert "failed" not in merged and merged["commands"] == ["first", "second"]
    assert merged["seeds"] == [0, 1] and (tmp_path / "curve.png").is_file()
    assert (tmp_path / "command.txt").read_text() == "first\nsecond\n"


def test_merge_refuses_curves_of_different_experiments():
    merge = script("curve_merge")
    old = curve([run("mamba", "interactive", 0, [1.0, 1.0])], "a", task_options={})
    new = curve([run("mamba", "interactive", 1, [1.0, 1.0])], "b", task_options={"second_digits": 2})
    with pytest.raises(ValueError, match="task options"):
        merge.merge(old, new)


def test_add_evaluations_fills_only_the_sizes_a_run_skipped(tmp_path):
    add = script("curve_add_evaluations")
    path = tmp_path / "curve.json"
    path.write_text(json.dumps({**curve([run("mamba", "interactive", 0, [0.75, None])], "a"),
                                "test_sizes": [10, 20], "n_per_size": 4}))
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"step": 10, "n": 4, "accuracy": {"10": 0.0, "20": 0.5}, "command": "evaluate"}))
    sys.argv = ["curve_add_evaluations", str(path), "--run", "mamba:interactive:0", "--exact", "-",
                "--decoded", str(report)]
    add.main()
    record = json.loads(path.read_text())["runs"][0]
    assert record["accuracy"] == {"10": 0.75, "20": 0.5}  # its own score at 10 stays
    assert record["skipped_sizes"] == [] and record["skip_reasons"] == {} and record["evaluated_by"] == ["evaluate"]
    report.write_text(json.dumps({"step": 11, "n": 4, "accuracy": {}, "command": "evaluate"}))
    with pytest.raises(SystemExit, match="step 11"):
        add.main()
