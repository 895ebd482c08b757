"""Experiment configs: one TOML file per experiment. The repository's tasks/*.toml ship inside the
package (`CONFIGS`, package data): `find_config("addition")` finds one by name, and a path to a
user's own file works everywhere a config is asked for.

    [task]                      # validated here
    name = "addition"           # a name of ssm_tools.tasks.TASKS
    mode = "interactive"        # one of the task's modes
    options = {}                # the task's options (e.g. second_digits, variant, add_weight)
    [sizes]                     # validated here
    train = [1, 5]              # training sizes: min, max (e.g. operand digits uniform in 1..5)
    test = [5, 10, 100, 1000]   # sizes evaluated, each >= the task's minimum
    [model] / [train] / [eval]  # checked by validate_run_sections (below): names and types only

`load_config(name_or_path)` returns the whole file as a dict with [task] and [sizes] checked and defaults
filled in; `make_task(config)` builds the task. Errors are ValueErrors naming the file and field.
"""
from __future__ import annotations

import os
import tomllib
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from .tasks import TASKS, Task, get_task

# tasks/*.toml of the repository, installed into the package by CMakeLists.txt.
CONFIGS = files("ssm_tools") / "configs"

_TASK_KEYS = {"name", "mode", "options"}
_SIZES_KEYS = {"train", "test"}


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def validate(config: dict, where: str = "config") -> dict:
    """Check [task] and [sizes] of a parsed config (defaults filled in); other sections untouched."""
    for section, keys in (("task", _TASK_KEYS), ("sizes", _SIZES_KEYS)):
        if not isinstance(config.get(section), dict):
            raise ValueError(f"{where}: missing section [{section}] (a table with keys {sorted(keys)})")
        unknown = set(config[section]) - keys
        if unknown:
            raise ValueError(f"{where}: [{section}] has unknown keys {sorted(unknown)}; allowed: {sorted(keys)}")
    task = {"mode": "interactive", "options": {}, **config["task"]}
    if task.get("name") not in TASKS:
        raise ValueError(f"{where}: [task] name must be one of {sorted(TASKS)}, got {task.get('name')!r}")
    if not isinstance(task["options"], dict):
        raise ValueError(f"{where}: [task] options must be a table, got {task['options']!r}")
    try:
        built = get_task(task["name"], task["mode"], **task["options"])
    except ValueError as e:
        raise ValueError(f"{where}: [task] {e}") from None
    sizes = config["sizes"]
    train = sizes.get("train")
    if not (isinstance(train, list) and len(train) == 2 and all(map(_is_int, train))
            and built.min_size <= train[0] <= train[1]):
        raise ValueError(f"{where}: [sizes] train must be [min, max] with {built.min_size} <= min <= max "
                         f"({built.size_name}), got {train!r}")
    test = sizes.get("test")
    if not (isinstance(test, list) and test and all(_is_int(s) and s >= built.min_size for s in test)):
        raise ValueError(f"{where}: [sizes] test must be a non-empty list of integers >= {built.min_size} "
                         f"({built.size_name}), got {test!r}")
    validate_run_sections(config, where)
    return {**config, "task": task, "sizes": {"train": list(train), "test": list(test)}}


def shipped_configs() -> list[str]:
    """The names of the configs that ship with the package (tasks/*.toml without the suffix)."""
    return sorted(p.name.removesuffix(".toml") for p in CONFIGS.iterdir() if p.name.endswith(".toml"))


def find_config(name_or_path: str | Path | Traversable) -> Path | Traversable:
    """A config file: `name_or_path` itself if it is a file, else the shipped config of that name
    (with or without .toml)."""
    if not isinstance(name_or_path, (str, os.PathLike)):  # a shipped file already
        return name_or_path
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CONFIGS / (path.name if path.suffix == ".toml" else f"{path.name}.toml")
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    raise FileNotFoundError(f"no config file {str(name_or_path)!r}, and no shipped config of that name "
                            f"(shipped: {', '.join(shipped_configs())})")


def load_config(name_or_path: str | Path | Traversable) -> dict:
    path = find_config(name_or_path)
    try:
        with path.open("rb") as f:
            config = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    return validate(config, str(path))


def make_task(config: dict) -> Task:
    task = config["task"]
    return get_task(task["name"], task["mode"], **task["options"])


def eval_task_spec(config: dict) -> dict:
    """The task graded at test time, {"name", "mode", "options"}: [eval] task in [task]'s mode, else
    [task] itself (configs with equal specs grade the same task)."""
    spec = config.get("eval", {}).get("task")
    if spec is None:
        return {k: config["task"][k] for k in ("name", "mode", "options")}
    return {"name": spec["name"], "mode": config["task"].get("mode", "interactive"), "options": spec.get("options", {})}


def make_eval_task(config: dict) -> Task:
    """The task graded at test time (eval_task_spec)."""
    spec = eval_task_spec(config)
    return get_task(spec["name"], spec["mode"], **spec["options"])


# -- [model] / [train] / [eval]: the training engineer's sections ------------------------------------
#   [model]  name = "mamba" (a name of ssm_tools.models.MODELS), scale = "tiny" | "paper" (a size
#            preset), any other key overrides the preset (d_model, n_layers, ...)
#   [train]  fields of ssm_tools.train.TrainConfig (steps, lr, batch_size, ...)
#   [eval]   n (episodes per size), sizes (default: [sizes] test), task (the task graded, a table
#            with name and options, in [task]'s mode; default: [task] itself -- a mixture's target
#            task alone is graded, not the mixture)
# All optional; the values themselves are checked where they are used (build_model, TrainConfig).

def validate_run_sections(config: dict, where: str = "config") -> None:
    from dataclasses import fields

    from .models import MODELS, PRESETS
    from .train import TrainConfig

    model = config.get("model", {})
    if not isinstance(model, dict):
        raise ValueError(f"{where}: [model] must be a table")
    if model.get("name", "mamba") not in MODELS:
        raise ValueError(f"{where}: [model] name must be one of {sorted(MODELS)}, got {model['name']!r}")
    if model.get("scale", "tiny") not in PRESETS:
        raise ValueError(f"{where}: [model] scale must be one of {sorted(PRESETS)}, got {model['scale']!r}")
    allowed = {"train": {f.name for f in fields(TrainConfig)}, "eval": {"n", "sizes", "task"}}
    for section, keys in allowed.items():
        table = config.get(section, {})
        if not isinstance(table, dict):
            raise ValueError(f"{where}: [{section}] must be a table")
        unknown = set(table) - keys
        if unknown:
            raise ValueError(f"{where}: [{section}] has unknown keys {sorted(unknown)}; allowed: {sorted(keys)}")
    n = config.get("eval", {}).get("n", 1)
    if not (_is_int(n) and n > 0):
        raise ValueError(f"{where}: [eval] n must be a positive integer, got {n!r}")
    sizes = config.get("eval", {}).get("sizes", [1])
    if not (isinstance(sizes, list) and sizes and all(_is_int(s) and s > 0 for s in sizes)):
        raise ValueError(f"{where}: [eval] sizes must be a non-empty list of positive integers, got {sizes!r}")
    task = config.get("eval", {}).get("task")
    if task is not None:
        if not (isinstance(task, dict) and set(task) <= {"name", "options"} and task.get("name") in TASKS
                and isinstance(task.get("options", {}), dict)):
            raise ValueError(f"{where}: [eval] task must be a table with name (one of {sorted(TASKS)}) and "
                             f"options, got {task!r}")
        try:
            make_eval_task(config)
        except ValueError as e:
            raise ValueError(f"{where}: [eval] task: {e}") from None
