"""Data-parallel training (ssm_tools.distributed): processes under torchrun (gloo on the CPU) take
the same optimizer steps as one process on the whole batch, and checkpoints resume across numbers of
processes. Float64 parameters, so "the same" is checked to 1e-9."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ssm_tools import distributed
from conftest import run_killed_after
from ssm_tools.cli import main
from ssm_tools.config import load_config, make_task
from ssm_tools.train import CHECKPOINT, TrainConfig, Trainer, length_groups

CONFIG = """
[task]
{task}
[sizes]
train = [1, {train_max}]
test = [5]
[model]
name = "{model}"
d_model = 16
n_layers = 1
[train]
steps = 4
batch_size = 5  # odd: the ranks take 3 and 2 rows
lr = 1e-2
warmup = 1
ckpt_every = 2
dtype = "float64"
"""


def write_config(tmp_path, model: str, task: str = 'name = "addition"', train_max: int = 5):
    path = tmp_path / f"{model}.toml"
    path.write_text(CONFIG.format(model=model, task=task, train_max=train_max))
    return path


def cli(*args, nproc: int = 2) -> subprocess.CompletedProcess:
    """`ssm-tools <args> --nproc N` in a subprocess (torchrun starts N more)."""
    return subprocess.run([sys.executable, "-m", "ssm_tools.cli", *map(str, args), "--nproc", str(nproc)],
                          capture_output=True, text=True, timeout=600)


def checkpoint(folder) -> dict:
    return torch.load(folder / CHECKPOINT, weights_only=True)


def log_losses(folder) -> list[float]:
    with open(folder / "log.csv", newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def assert_same_run(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    assert b["last_loss"] == pytest.approx(a["last_loss"], rel=1e-9)
    assert a["model_state"].keys() == b["model_state"].keys()
    for name, value in a["model_state"].items():
        torch.testing.assert_close(b["model_state"][name], value, rtol=1e-9, atol=1e-12, msg=name)
    for state_a, state_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        torch.testing.assert_close(state_b["exp_avg_sq"], state_a["exp_avg_sq"], rtol=1e-9, atol=1e-15)


# 1..3-disk recursive Hanoi (30..~450 tokens): each rank's rows come in length groups, at one step
# two on one rank and one on the other (checked below).
HANOI = 'name = "hanoi"\noptions = { variant = "recursive" }'


def rank_groups(config) -> list[list[int]]:
    """The number of length groups of each rank's rows (rank, rank + 2, ...) at each step of the
    config's training stream (two processes)."""
    parsed = load_config(config)
    task, train = make_task(parsed), TrainConfig(**{"train_max_size": parsed["sizes"]["train"][1], **parsed["train"]})
    rng = np.random.default_rng(train.seed)  # the Trainer's data stream
    lengths = [task.trajectories(rng, [train.train_max_size] * train.batch_size, train=True)[0].lengths
               for _ in range(train.steps)]
    return [[len(length_groups(n[rank::2])) for rank in (0, 1)] for n in lengths]


@pytest.mark.parametrize("model, task", [("mamba", {}), ("pythia", {}),
                                         ("pythia", {"task": HANOI, "train_max": 3})])
def test_two_processes_take_the_steps_of_one(tmp_path, model, task):
    config = write_config(tmp_path, model, **task)
    if task:  # the ranks' backward passes differ in number: only the last of each syncs
        groups = rank_groups(config)
        assert any(a != b for a, b in groups) and max(map(max, groups)) > 1
    result = cli("train", "--config", config, "--quiet", "--out", tmp_path / "ddp")
    assert result.returncode == 0, result.stdout + result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1 and printed[0]["processes"] == 2 and printed[0]["step"] == 4  # rank 0 speaks
    assert main(["train", "--config", str(config), "--quiet", "--out", str(tmp_path / "one")]) == 0
    ddp, one = checkpoint(tmp_path / "ddp"), checkpoint(tmp_path / "one")
    assert_same_run(one, ddp)
    assert ddp["model_state"]["embedding.weight"].dtype == torch.float64
    assert not torch.equal(ddp["model_state"]["embedding.weight"],
                           Trainer(make_task(load_config(config)), ddp["model"], ddp["model_cfg"],
                                   TrainConfig(**ddp["train"]), tmp_path / "init").model.embedding.weight.detach())
    losses = log_losses(tmp_path / "ddp")
    assert len(losses) == 4  # one row a step, written once
    assert losses == pytest.approx(log_losses(tmp_path / "one"), abs=1e-5)  # as written: 5 decimals


def test_a_checkpoint_of_one_process_resumes_in_two(tmp_path):
    config = write_config(tmp_path, "mamba")
    parsed = load_config(config)
    model_cfg = {"vocab_size": 128, "d_model": 16, "n_layers": 1, "d_state": 16}  # what `train` builds
    cfg = TrainConfig(**{"train_max_size": 5, **parsed["train"]})
    killed = Trainer(make_task(parsed), "mamba", model_cfg, cfg, tmp_path / "resumed", progress=False)
    run_killed_after(killed, 3)  # the checkpoint holds step 2
    assert checkpoint(tmp_path / "resumed")["step"] == 2
    result = cli("train", "--config", config, "--quiet", "--out", tmp_path / "resumed", "--resume")
    assert result.returncode == 0, result.stdout + result.stderr
    assert main(["train", "--config", str(config), "--quiet", "--out", str(tmp_path / "whole")]) == 0
    assert_same_run(checkpoint(tmp_path / "whole"), checkpoint(tmp_path / "resumed"))
    assert log_losses(tmp_path / "resumed") == pytest.approx(log_losses(tmp_path / "whole"), abs=1e-5)


def test_reproduce_in_two_processes_writes_one_curve(tmp_path):
    out = tmp_path / "curve"
    result = cli("reproduce", "addition", "--scale", "cpu", "--runs", "mamba:interactive", "--seeds", "0",
                 "--steps", "3", "--sizes", "5", "--n", "4", "--out", out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("wrote ") == 1
    curve = json.loads((out / "curve.json").read_text())
    (run,) = curve["runs"]
    assert run["train_processes"] == 2 and set(run["accuracy"]) == {"5"} and curve["device"] == "cpu"
    assert "--nproc 2" in curve["command"]


def test_bad_process_counts_and_devices_are_refused(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path, "mamba")
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", str(config), "--nproc", "0"])
    assert e.value.code == 2 and "--nproc must be positive" in capsys.readouterr().err
    result = cli("train", "--config", config, "--quiet", "--out", tmp_path / "x", "--batch-size", "1")
    assert result.returncode != 0
    assert "batch_size 1 is smaller than the 2 processes" in result.stdout + result.stderr
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun would start this process
    with pytest.raises(ValueError, match="each takes the GPU of its local rank"):
        distributed.setup("cuda:1")
    with pytest.raises(ValueError, match="runs on cuda or cpu"):
        distributed.setup("meta")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.setup("cuda:1") == "cuda:1" and distributed.world() == (0, 1)
