"""Files from elsewhere are data, never code: checkpoints load as tensors and plain data (a pickle that
would run code is refused with nothing run), models travel as safetensors + config.json, and TOML
configs are parsed, not evaluated."""
import json
import os
import pickle

import numpy as np
import pytest
import torch

from ssm_tools import checkpoint
from ssm_tools.cli import main
from ssm_tools.config import load_config
from ssm_tools.models import build_model, load_pretrained, save_pretrained
from ssm_tools.tasks import get_task
from ssm_tools.train import CHECKPOINT, TrainConfig, Trainer, load_checkpoint
from test_models import SMALL

class Opaque:
    """An object of our own: no plain-data form."""


class MarkerOnLoad:
    """Unpickling this creates a file: the proof that loading ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def trainer(out, steps=2):
    cfg = TrainConfig(steps=steps, batch_size=2, warmup=1, ckpt_every=1)
    return Trainer(get_task("addition"), "mamba", {"vocab_size": 128, **SMALL["mamba"]}, cfg, out, progress=False,
                   run_info={"task": {"name": "addition", "mode": "interactive", "options": {}},
                             "sizes": {"train": [1, 3], "test": [3]}})


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_malicious_pickle_is_refused_with_nothing_run(tmp_path, capsys, writer):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "run" / CHECKPOINT
    evil.parent.mkdir()
    state = {"model": "mamba", "model_cfg": {}, "payload": MarkerOnLoad(marker)}
    if writer == "pickle":
        evil.write_bytes(pickle.dumps(state, protocol=2))
    else:
        torch.save(state, evil)
    for attempt in (lambda: load_checkpoint(evil), lambda: load_checkpoint(evil.parent),
                    lambda: trainer(tmp_path / "other").load(evil), lambda: checkpoint.load(evil)):
        with pytest.raises(ValueError, match="refused, nothing in it was run.*ssm_tools.checkpoint convert"):
            attempt()
    with pytest.raises(SystemExit) as exit:
        main(["evaluate", "--checkpoint", str(evil.parent), "--sizes", "3", "--n", "1"])
    assert exit.value.code == 2
    assert "refused, nothing in it was run" in capsys.readouterr().err
    assert not marker.exists()


def test_checkpoints_hold_only_tensors_and_plain_data_and_resume(tmp_path):
    first = trainer(tmp_path / "run")
    first.run()
    state = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)  # would raise on any object
    assert state["step"] == 2 and not list((tmp_path / "run").glob("*.tmp"))
    resumed = trainer(tmp_path / "run", steps=3)
    resumed.load(tmp_path / "run" / CHECKPOINT)
    assert resumed.step == 2 and resumed.rng.bit_generator.state == first.rng.bit_generator.state


def test_an_older_layout_is_refused_then_converted_once(tmp_path):
    t = trainer(tmp_path / "run")
    t.run()
    old = tmp_path / "old.pt"
    state = t.state_dict()  # as an older layout might have held it: NumPy values, a path object
    state["rng"]["numpy_array"] = np.arange(3)
    state["last_loss"] = np.float64(state["last_loss"])
    state["out"] = tmp_path / "run"
    torch.save(state, old)
    with pytest.raises(ValueError, match="python -m ssm_tools.checkpoint convert"):
        checkpoint.load(old)
    assert checkpoint.main(["convert", str(old), str(tmp_path / "new.pt")]) == 0
    converted = checkpoint.load(tmp_path / "new.pt")
    assert converted["out"] == str(tmp_path / "run") and torch.equal(converted["rng"]["numpy_array"], torch.arange(3))
    resumed = trainer(tmp_path / "again", steps=3)
    resumed.load(tmp_path / "new.pt")
    assert resumed.step == 2 and resumed.last_loss == t.last_loss
    with pytest.raises(SystemExit):  # objects with no plain form stay refused, and nothing is written
        torch.save({"x": Opaque()}, tmp_path / "objects.pt")
        checkpoint.main(["convert", str(tmp_path / "objects.pt"), str(tmp_path / "objects_new.pt")])
    assert not (tmp_path / "objects_new.pt").exists()


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_save_and_load_pretrained(tmp_path, name, dtype):
    torch.manual_seed(0)
    model = build_model(name, vocab_size=128, **SMALL[name]).to(dtype).eval()
    folder = save_pretrained(model, tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model"] == name and config["config"] == {"vocab_size": 128, **SMALL[name]}
    loaded = load_pretrained(folder)
    tokens = torch.randint(0, 128, (2, 9))
    assert loaded.embedding.weight.dtype == dtype and not loaded.training
    torch.testing.assert_close(loaded(tokens), model(tokens), rtol=0, atol=0)
    for (key, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), key


def test_pretrained_folder_checks(tmp_path):
    with pytest.raises(ValueError, match="needs a model made by build_model"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="no model folder"):
        load_pretrained(tmp_path / "nothing")
    folder = save_pretrained(build_model("gru", vocab_size=128, **SMALL["gru"]), tmp_path / "m")
    (folder / "config.json").write_text(json.dumps({"format": "ssm-tools model", "model": "gru",
                                                    "config": {}, "dtype": "int8"}))
    with pytest.raises(ValueError, match="config.json: \"dtype\" must be one of"):
        load_pretrained(folder)


def test_evaluate_accepts_an_exported_model_folder(tmp_path, capsys):
    trainer(tmp_path / "run").run()
    assert checkpoint.main(["export", str(tmp_path / "run"), str(tmp_path / "model")]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "model"), "--n", "2"]) == 0
    from_folder = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run"), "--n", "2"]) == 0
    from_checkpoint = json.loads(capsys.readouterr().out)
    assert from_folder["step"] == from_checkpoint["step"] == 2
    assert from_folder["accuracy"] == from_checkpoint["accuracy"] and list(from_folder["accuracy"]) == ["3"]


def test_toml_configs_are_parsed_not_run(tmp_path):
    marker = tmp_path / "code-ran"
    payload = f"__import__('os').system('touch {marker}')"
    config = tmp_path / "evil.toml"
    config.write_text(f'[task]\nname = "{payload}"\n[sizes]\ntrain = [1, 2]\ntest = [3]\n'
                      f'[model]\nname = "{payload}"\n')
    with pytest.raises(ValueError, match="name must be one of"):
        load_config(config)
    with pytest.raises(SystemExit) as exit:
        main(["train", "--config", str(config), "--steps", "1", "--out", str(tmp_path / "o")])
    assert exit.value.code == 2
    assert not marker.exists() and not os.path.exists(tmp_path / "o")
