"""The `ssm-tools` command: train, pool, evaluate, reproduce, bench, show.

Bad arguments or missing files end with one line `ssm-tools: error: ...` and exit status 2, never a
traceback.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

# The source checkout this package was installed from in editable mode (`make build`), if any:
# benchmarks/ is not part of the package.
CHECKOUT = Path(__file__).resolve().parents[2]


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative integers, got {text!r}")
    return values


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative numbers, got {text!r}")
    return values


def _command(args) -> str:
    return shlex.join(["ssm-tools", *args.argv])


def cmd_train(args) -> None:
    from .config import load_config
    from .train import CHECKPOINT, make_trainer

    config = load_config(args.config)
    model_section = dict(config.get("model", {}))
    name = args.model or model_section.get("name", "mamba")
    scale = args.scale or model_section.get("scale", "tiny")
    model_overrides = {k: v for k, v in model_section.items() if k not in ("name", "scale")}
    overrides = {k: v for k, v in (("steps", args.steps), ("lr", args.lr), ("batch_size", args.batch_size),
                                   ("seed", args.seed), ("pool", args.pool)) if v is not None}
    out = args.out or f"runs/{Path(args.config).stem}-{name}"
    trainer = make_trainer(config, name, scale, {**config.get("train", {}), **overrides}, out,
                           model_overrides=model_overrides, device=args.device, progress=not args.quiet)
    checkpoint = Path(out) / CHECKPOINT
    if args.resume:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint}")
        trainer.load(checkpoint)
    row = trainer.run()
    if trainer.rank == 0:
        print(json.dumps({"checkpoint": str(checkpoint), "step": trainer.step, "loss": row.get("loss"),
                          "processes": trainer.world}))


def cmd_pool(args) -> None:
    import time

    from .config import load_config
    from .pool import build_pool, save

    started = time.perf_counter()
    built = build_pool(load_config(args.config), args.episodes, seed=args.seed, train_max_size=args.train_max_size,
                       threads=args.threads, progress=not args.quiet, max_seconds=args.max_seconds)
    print(json.dumps({"pool": str(save(built, args.out)), **built.identity(),
                      "seconds": round(time.perf_counter() - started, 1)}))


def cmd_evaluate(args) -> None:
    from .config import make_eval_task
    from .evaluate import evaluate, exact_trajectory_size
    from .train import load_checkpoint

    model, meta = load_checkpoint(args.checkpoint, args.device)
    run = meta["run"]
    spec = {"mode": "interactive", "options": {}, **run["task"]}
    # Options given here override the checkpoint's (e.g. a task default changed since it trained).
    spec["options"] = {**spec["options"], **dict(args.option)}
    task = make_eval_task({"task": spec, "eval": run.get("eval", {})})  # [eval] task, else [task]
    # Defaults from the training config: [eval] sizes / n, else [sizes] test.
    sizes = args.sizes or run.get("eval", {}).get("sizes") or run.get("sizes", {}).get("test")
    n = args.n or run.get("eval", {}).get("n", 100)
    if not sizes:
        raise ValueError("--sizes is required: the checkpoint's config names no test sizes")
    if args.exact_trajectory:
        per_size = {s: exact_trajectory_size(model, task, s, n, device=args.device) for s in sizes}
        result = {"exact_trajectory": {s: r["exact_trajectory"] for s, r in per_size.items()}, "per_size": per_size}
    else:
        result = evaluate(model, task, sizes, n, device=args.device, precision=args.precision)
    scores = {k: {str(s): a for s, a in result[k].items()} for k in ("accuracy", "exact_trajectory") if k in result}
    report = {"checkpoint": str(args.checkpoint), "task": spec, "graded_task": repr(task), "model": meta["model"],
              "step": meta["step"], **({"selected_step": meta["selected_step"]} if "selected_step" in meta else {}),
              "n": n, **scores, "per_size": {str(s): r for s, r in result["per_size"].items()}, "command": _command(args)}
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)


def cmd_reproduce(args) -> None:
    from .distributed import is_main
    from .reproduce import reproduce

    out = args.out or f"results/{args.task}"
    only = None if args.runs is None else [tuple(r.split(":", 1)) for r in args.runs.split(",")]
    if only is not None and any(len(r) != 2 for r in only):
        raise ValueError(f"--runs must be model:mode pairs separated by commas, got {args.runs!r}")
    curve = reproduce(args.task, args.scale, args.seeds, out, device=args.device, command=_command(args),
                      only=only, sizes=args.sizes, n=args.n, steps=args.steps,
                      max_eval_seconds=args.max_eval_seconds, merge=args.merge,
                      max_train_seconds=args.max_train_seconds, workers=args.workers,
                      max_seconds=args.max_seconds, lr=args.lr, lr_grid=args.lr_grid, val_size=args.val_size,
                      val_steps=args.val_steps, add_weights=args.add_weights,
                      evaluate_stopped=args.evaluate_stopped, fit_train_seconds=args.fit_train_seconds,
                      pack=not args.no_pack, stop_after_zero=args.stop_after_zero, joint_eval=args.joint_eval,
                      pool_episodes=args.pool_episodes, pool_seconds=args.pool_seconds, precision=args.precision,
                      select_every=args.select_every, train_within=args.train_within)
    if not is_main():
        return
    print(f"wrote {out}/curve.json and {out}/curve.png ({len(curve['runs'])} runs)")
    for r in curve["runs"]:
        if r.get("trained_steps", r["train"]["steps"]) < r["train"]["steps"]:
            print(f"{r['model']} ({r['mode']}, seed {r['seed']}): trained {r['trained_steps']} of "
                  f"{r['train']['steps']} steps (its time budget), evaluated as it is (--evaluate-stopped)")
    for r in curve["unfinished"]:
        print(f"{r['model']} ({r['mode']}, seed {r['seed']}): training stopped at step {r['stopped']} of "
              f"{r['steps']} (--max-train-seconds); run the same command again to resume")
    for r in curve.get("failed", []):
        print(f"{r['model']} ({r['mode']}, seed {r['seed']}) failed: {r['error']}")
    if curve.get("failed"):
        raise SystemExit(1)


def benchmarks_folder() -> Path:
    """benchmarks/ of the source checkout: the one this package runs from, else the working folder's."""
    for root in (CHECKOUT, Path.cwd()):
        pyproject = root / "pyproject.toml"
        if pyproject.is_file() and 'name = "ssm-tools"' in pyproject.read_text() and (root / "benchmarks").is_dir():
            return root / "benchmarks"
    raise FileNotFoundError("ssm-tools bench runs the scripts in benchmarks/ of a source checkout, which this "
                            "installed package does not include: run it inside a clone of the repository")


def cmd_bench(args) -> None:
    folder = benchmarks_folder()
    names = {p.stem.removeprefix("bench_"): p for p in sorted(folder.glob("bench_*.py"))}
    if not args.names:
        print("benchmarks: " + ", ".join(names))
        return
    unknown = [n for n in args.names if n not in names]
    if unknown:
        raise ValueError(f"unknown benchmark {unknown}; available: {sorted(names)}")
    for n in args.names:
        subprocess.run([sys.executable, str(names[n])], cwd=folder.parent, check=True)


def cmd_show(args) -> None:
    # The task viewer reports its own errors (one line); pass its exit status on.
    status = subprocess.run([sys.executable, "-m", "ssm_tools.tasks", "show", *args.rest]).returncode
    if status:
        raise SystemExit(status)


def _nproc_option(p) -> None:
    p.add_argument("--nproc", type=int, default=1,
                   help="train data-parallel in this many processes under torchrun (one per GPU with "
                        "--device cuda; gloo on cpu); results do not depend on it")


def parser() -> argparse.ArgumentParser:
    from .evaluate import PRECISIONS
    from .models import MODELS, PRESETS
    from .reproduce import SCALES, TASKS
    from .tasks import parse_option

    p = argparse.ArgumentParser(prog="ssm-tools", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on a task's oracle trajectories")
    t.add_argument("--config", required=True,
                   help="experiment config: a TOML file, or the name of one that ships with the package "
                        "(e.g. addition: the repository's tasks/addition.toml)")
    t.add_argument("--model", help=f"model name ({', '.join(sorted(MODELS))}); default: [model] name or mamba")
    t.add_argument("--scale", choices=sorted(PRESETS), help="size preset (default: [model] scale or tiny)")
    t.add_argument("--steps", type=int, help="optimizer steps")
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--batch-size", type=int, help="trajectories per step")
    t.add_argument("--seed", type=int, help="seed of the model init and the data stream")
    t.add_argument("--pool", help="draw the batches from this trajectory pool (ssm-tools pool) instead of building "
                                  "fresh oracle trajectories")
    t.add_argument("--out", help="run folder (checkpoint.pt, log.csv); default runs/<config>-<model>")
    t.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    t.add_argument("--device", default="cpu", help="torch device (default cpu; cuda trains in bf16 autocast)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    _nproc_option(t)
    t.set_defaults(func=cmd_train)

    o = sub.add_parser("pool", help="build a trajectory pool: oracle trajectories built once, for train --pool")
    o.add_argument("--config", required=True, help="experiment config (a TOML file or a shipped config's name)")
    o.add_argument("--episodes", type=int, required=True, help="trajectories in the pool")
    o.add_argument("--out", required=True, help="the pool file to write (.npz)")
    o.add_argument("--seed", type=int, default=0, help="seed of the instances drawn (default 0)")
    o.add_argument("--train-max-size", type=int,
                   help="largest training size drawn (default: the config's [sizes] train maximum)")
    o.add_argument("--max-seconds", type=float,
                   help="stop after the chunk of episodes that ends past this time (a pool of fewer episodes)")
    o.add_argument("--threads", type=int, default=0, help="threads building oracles and replays (default: one per core)")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    o.set_defaults(func=cmd_pool)

    e = sub.add_parser("evaluate", help="run a checkpoint interactively at test sizes, exact-answer accuracy")
    e.add_argument("--checkpoint", required=True,
                   help="checkpoint.pt, its run folder, or a model folder (ssm_tools.models.save_pretrained)")
    e.add_argument("--sizes", type=_int_list,
                   help="comma-separated sizes (default: the training config's [eval] sizes or [sizes] test)")
    e.add_argument("--n", type=int, help="episodes per size, run as one batch (default: [eval] n or 100)")
    e.add_argument("--out", help="also write the JSON report here")
    e.add_argument("--device", default="cpu", help="torch device")
    e.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="the decode's matmuls: float32; tf32 (GPU: float32 on TF32 tensor cores); bfloat16 "
                        "(Mamba: bf16 weights, as in training under autocast); see README, Performance")
    e.add_argument("--exact-trajectory", action="store_true",
                   help="score whole trajectories by teacher forcing (one forward pass per episode: fast at "
                        "sizes whose decoding takes minutes) instead of decoding with the tools")
    e.add_argument("--option", type=parse_option, action="append", default=[],
                   help="task option key=value over the checkpoint's, e.g. name_pool=0 for a coding run "
                        "trained before function names were drawn from a pool")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("reproduce", help="length-generalization curves: train, evaluate, plot")
    r.add_argument("task", choices=sorted(TASKS), help="task (its shipped config, tasks/<task>.toml)")
    r.add_argument("--scale", choices=sorted(SCALES), default="cpu",
                   help="cpu: minutes on a CPU; paper: paper sizes; gpu_small (the mixture): one GPU call, "
                        "models smaller than the paper's, recorded as such")
    r.add_argument("--seeds", type=_int_list, help="comma-separated seeds (default: the scale's)")
    r.add_argument("--runs", help="only these model:mode pairs, e.g. mamba:interactive,lstm:interactive")
    r.add_argument("--out", help="output folder (default results/<task>)")
    r.add_argument("--device", default="cpu", help="torch device")
    r.add_argument("--merge", action="store_true",
                   help="add the runs to <out>/curve.json (replacing runs of the same model, mode and seed)")
    r.add_argument("--sizes", type=_int_list, help="comma-separated test sizes (default: the task's at this scale)")
    r.add_argument("--n", type=int, help="episodes per test size (default: the scale's)")
    r.add_argument("--steps", type=int, help="training steps (default: the scale's; for a sweep, its budgets)")
    r.add_argument("--lr", type=float, help="peak learning rate (default: the scale's)")
    r.add_argument("--lr-grid", type=_float_list,
                   help="choose the learning rate first: one short run per rate (comma-separated), graded at "
                        "--val-size; the choice and every candidate go into curve.json")
    r.add_argument("--val-size", type=int, help="the held-out size --lr-grid and --select-every grade at (not a test size)")
    r.add_argument("--select-every", type=int,
                   help="checkpoint selection: every run scores its weights at --val-size (exact trajectories, "
                        "teacher forced) every this many steps and is evaluated with the best step's")
    r.add_argument("--val-steps", type=int, help="steps of each --lr-grid run (default: a quarter of --steps)")
    r.add_argument("--add-weights", type=_float_list,
                   help="multiplication_mixture: only these addition weights (default: 0,0.33,0.5,0.6)")
    r.add_argument("--max-train-seconds", type=float,
                   help="time budget for each run's training in this process: a run that runs out "
                        "checkpoints under runs/ and is resumed by the same command, run again")
    r.add_argument("--train-within", type=float,
                   help="every run's training ends within this many seconds of the start (a run still training "
                        "stops as with --max-train-seconds; runs start longest first)")
    r.add_argument("--evaluate-stopped", action="store_true",
                   help="a run that --max-train-seconds stops is evaluated as it is and joins the curve (its "
                        "record says how many steps it trained), not left for the same command to resume")
    r.add_argument("--fit-train-seconds", type=float,
                   help="give each run this much training time: its steps are cut to fit, from the pace of its "
                        "warmup (the recipe recorded is the one trained; for GPU calls of fixed length)")
    r.add_argument("--pool-episodes", type=int,
                   help="every run draws its batches from one trajectory pool of this many episodes per mode, "
                        "built on every core before the runs train (0: fresh trajectories; default: the scale's)")
    r.add_argument("--pool-seconds", type=float,
                   help="each pool's build stops after the chunk that ends past this time (a pool of fewer episodes)")
    r.add_argument("--no-pack", action="store_true",
                   help="train Mamba on rows padded to the longest episode instead of packed rows")
    r.add_argument("--max-eval-seconds", type=float,
                   help="evaluation budget per run: sizes predicted to take it past this are skipped (null), "
                        "and one still running at its end is stopped and skipped; default: the scale's, if it has one")
    r.add_argument("--max-seconds", type=float,
                   help="every evaluation ends within this many seconds of the start: sizes predicted to "
                        "end later are skipped (null), as with --max-eval-seconds")
    r.add_argument("--workers", type=int,
                   help="runs at a time, each in its own process (default: one per core with --device cpu, "
                        "else 1); on a GPU they train side by side and evaluate one at a time (see --joint-eval)")
    r.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="the evaluation's decode matmuls (as evaluate --precision); recorded in each run")
    r.add_argument("--stop-after-zero", action=argparse.BooleanOptionalAction,
                   help="a run at 0/n at some size is not decoded at larger ones: they are recorded as "
                        "skipped, with that reason (default: on at --scale paper, off at cpu)")
    r.add_argument("--joint-eval", action=argparse.BooleanOptionalAction,
                   help="evaluate a mode's Mamba / LSTM / GRU runs together, in one rollout per size, once "
                        "all are trained (default: on with a GPU device)")
    _nproc_option(r)
    r.set_defaults(func=cmd_reproduce)

    b = sub.add_parser("bench", help="run benchmarks/bench_<name>.py scripts of a source checkout (no name: list them)")
    b.add_argument("names", nargs="*", help="benchmark names")
    b.set_defaults(func=cmd_bench)

    s = sub.add_parser("show", help="print one task trajectory (python -m ssm_tools.tasks show ...)")
    s.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of `python -m ssm_tools.tasks show`")
    s.set_defaults(func=cmd_show)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.argv = argv
    for name in ("steps", "batch_size", "n", "nproc", "workers", "max_seconds", "lr", "val_size", "val_steps",
                 "episodes", "select_every"):
        if getattr(args, name, None) is not None and getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    from .distributed import launch, launched, shutdown

    try:
        if getattr(args, "nproc", 1) > 1 and not launched():
            return launch(args.nproc, argv)  # the same command in nproc processes, which run it
        args.func(args)
        shutdown()
    except (ValueError, FileNotFoundError) as e:  # bad input; anything else is a bug: its traceback shows
        p.error(str(e))  # one line on stderr, exit status 2
    except subprocess.CalledProcessError as e:
        print(f"ssm-tools: error: {shlex.join(map(str, e.cmd))} failed with status {e.returncode}", file=sys.stderr)
        return e.returncode
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
