"""benchmarks/eval_operands.py: every run of a runs folder graded on each kind of test operands, the
graded task being the run's own (a mixture's target task) with only the operands changed."""
import json
import subprocess
import sys
from pathlib import Path

from ssm_tools.cli import main

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_every_run_is_graded_on_every_kind_of_operands(tmp_path):
    for config in ("addition", "mixture_add0.5"):
        assert main(["train", "--config", config, "--out", str(tmp_path / "runs" / config), "--steps", "1",
                     "--batch-size", "2", "--quiet"]) == 0
    out = tmp_path / "operands.json"
    subprocess.run([sys.executable, str(BENCH / "eval_operands.py"), "--runs", str(tmp_path / "runs"), "--sizes",
                    "2,3", "--n", "2", "--out", str(out)], check=True, capture_output=True)
    record = json.loads(out.read_text())
    graded = {(r["run"], r["operands"]): r["graded_task"] for r in record["results"]}
    assert graded == {
        ("addition", "uniform"): "Addition(mode='interactive')",
        ("addition", "carries"): "Addition(mode='interactive', operands='carries')",
        ("addition", "zero_runs"): "Addition(mode='interactive', operands='zero_runs')",
        ("mixture_add0.5", "uniform"): "Multiplication(mode='interactive', second_digits=2)",
        ("mixture_add0.5", "carries"): "Multiplication(mode='interactive', second_digits=2, operands='carries')",
        ("mixture_add0.5", "zero_runs"): "Multiplication(mode='interactive', second_digits=2, operands='zero_runs')"}
    assert all(set(r["accuracy"]) == {"2", "3"} for r in record["results"])
    assert record["command"].startswith("python ") and record["n"] == 2
