"""Checkpoint files, read without running anything they hold.

A training checkpoint (`checkpoint.pt`) is a torch.save file of tensors and plain data, read with
torch.load(weights_only=True): a file holding anything else -- a pickled object whose loading would
run code, as in an untrusted file or a checkpoint of an older layout -- is refused before any of it
runs. A trained model to share is a folder of model.safetensors and config.json
(`ssm_tools.models.save_pretrained` / `load_pretrained`), with no pickle at all.

    python -m ssm_tools.checkpoint export runs/x/checkpoint.pt models/x   # a model folder to share
    python -m ssm_tools.checkpoint convert old.pt new.pt  # only for a file you made: runs its pickle once
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import torch


def save(state: dict, path) -> Path:
    """torch.save `state` to `path` atomically: a kill mid-write leaves the previous file intact."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load(path, map_location="cpu") -> dict:
    """The tensors and plain data of a checkpoint; ValueError (nothing run) for a file holding more."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line for line in str(e).splitlines() if "GLOBAL" in line or "Unsupported" in line]
        reason = lines[0].strip() if lines else "not a weights-only file"
        raise ValueError(
            f"checkpoint {path} refused, nothing in it was run: it holds pickled objects beyond tensors and "
            f"plain data ({reason}). An untrusted file or an older checkpoint layout does; if you made this "
            f"file yourself, convert it once: python -m ssm_tools.checkpoint convert {path} NEW.pt") from None


def plain(value):
    """`value` as tensors and plain data: NumPy arrays become tensors, NumPy scalars and paths their
    Python values; containers are converted item by item, anything else is kept as it is."""
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def convert(old, new) -> Path:
    """Re-save a checkpoint of an older layout as tensors and plain data. Unpickles `old` with full
    rights: only for files you made yourself."""
    state = torch.load(old, map_location="cpu", weights_only=False)
    try:
        save(plain(state), new)
        load(new)
    except (ValueError, TypeError, pickle.PicklingError):
        Path(new).unlink(missing_ok=True)
        raise ValueError(f"{old}: holds objects that have no plain-data form; not converted") from None
    return Path(new)


def export(checkpoint, folder) -> Path:
    """A training checkpoint's model (the selected step's, under checkpoint selection) as a
    save_pretrained folder, with what evaluation needs."""
    from .models import save_pretrained
    from .train import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    return save_pretrained(model, folder, run=meta["run"], step=meta.get("selected_step", meta["step"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssm_tools.checkpoint", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="a training checkpoint -> a model folder (safetensors + config.json)")
    e.add_argument("checkpoint", help="checkpoint.pt or its run folder")
    e.add_argument("folder", help="the model folder to write")
    c = sub.add_parser("convert", help="re-save an older checkpoint layout safely (runs its pickle: only your own files)")
    c.add_argument("old")
    c.add_argument("new")
    args = parser.parse_args(argv)
    try:
        print(export(args.checkpoint, args.folder) if args.command == "export" else convert(args.old, args.new))
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
