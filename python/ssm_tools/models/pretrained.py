"""A trained model as a folder anyone can load without our training state or a pickle:
model.safetensors (the weights) and config.json (the model's family, its constructor config, the
parameters' dtype; optionally what evaluation needs: the training config's [task], [sizes] and [eval]
tables as "run", and the training "step")."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

WEIGHTS, CONFIG = "model.safetensors", "config.json"
FORMAT = "ssm-tools model"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def save_pretrained(model, path, run: dict | None = None, step: int | None = None) -> Path:
    """Write `model` (made by build_model) to the folder `path`; each file replaced atomically."""
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError("model: save_pretrained needs a model made by build_model (it records the family "
                         "and config)")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    config = {"format": FORMAT, "model": spec["model"], "config": spec["config"], "dtype": dtype,
              "run": run or {}, "step": step}
    save_model(model, str(folder / (WEIGHTS + ".tmp")))  # tied weights are stored once
    os.replace(folder / (WEIGHTS + ".tmp"), folder / WEIGHTS)
    (folder / (CONFIG + ".tmp")).write_text(json.dumps(config, indent=1) + "\n")
    os.replace(folder / (CONFIG + ".tmp"), folder / CONFIG)
    return folder


def is_pretrained(path) -> bool:
    return (Path(path) / CONFIG).is_file() and (Path(path) / WEIGHTS).is_file()


def read_config(path) -> dict:
    """config.json of a model folder, checked; ValueError naming the file and field."""
    file = Path(path) / CONFIG
    try:
        config = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: not a model config: {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{file}: \"format\" must be {FORMAT!r}")
    if not isinstance(config.get("model"), str) or not isinstance(config.get("config"), dict):
        raise ValueError(f"{file}: needs \"model\" (a name) and \"config\" (its constructor options)")
    if config.get("dtype") not in DTYPES:
        raise ValueError(f"{file}: \"dtype\" must be one of {sorted(DTYPES)}, got {config.get('dtype')!r}")
    return config


def load_pretrained(path, device="cpu"):
    """The model of a save_pretrained folder, in eval mode on `device`."""
    from . import build_model

    if not is_pretrained(path):
        raise FileNotFoundError(f"no model folder at {path} (needs {WEIGHTS} and {CONFIG})")
    config = read_config(path)
    model = build_model(config["model"], **config["config"]).to(device, DTYPES[config["dtype"]])
    load_model(model, str(Path(path) / WEIGHTS), strict=True, device=str(device))
    return model.eval()
