"""Every trained run of a reproduction scored on carry-heavy and zero-run test operands beside uniform
ones (the arithmetic tasks' `operands` option, ssm_tools.tasks.arithmetic.OPERANDS): decoded
exact-answer accuracy per size, the same sizes and n for every kind, each run graded on its
checkpoint's task with only the operands changed.

    python benchmarks/eval_operands.py --runs runs/reproduce-addition-cpu --sizes 10,20,50,100 --n 50 \
        --out results/addition/operands.json
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from _results import write_result  # benchmarks/_results.py (run as a script: its folder is on sys.path)
from ssm_tools.config import make_eval_task
from ssm_tools.evaluate import evaluate
from ssm_tools.tasks.arithmetic import OPERANDS
from ssm_tools.train import CHECKPOINT, load_checkpoint


def with_operands(config: dict, kind: str) -> dict:
    """The config with its graded task's operands (the [eval] task's if it names one: a mixture's)."""
    table = "eval" if "task" in config["eval"] else None
    spec = config["eval"]["task"] if table else config["task"]
    spec = {**spec, "options": {**spec.get("options", {}), "operands": kind}}
    return {**config, "eval": {**config["eval"], "task": spec}} if table else {**config, "task": spec}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True, help="a reproduction's runs folder (one folder per run)")
    ap.add_argument("--sizes", required=True, help="comma-separated test sizes")
    ap.add_argument("--n", type=int, default=50, help="episodes per size and kind")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    folders = sorted(p.parent for p in Path(args.runs).glob(f"*/{CHECKPOINT}"))
    if not folders:
        raise SystemExit(f"no {CHECKPOINT} under {args.runs}/*/")
    rows = []
    for folder in folders:
        model, meta = load_checkpoint(folder, args.device)
        spec = {"mode": "interactive", "options": {}, **meta["run"]["task"]}
        for kind in OPERANDS:
            task = make_eval_task(with_operands({"task": spec, "eval": meta["run"].get("eval", {})}, kind))
            t0 = time.perf_counter()
            accuracy = evaluate(model, task, sizes, args.n, device=args.device)["accuracy"]
            rows.append({"run": folder.name, "model": meta["model"], "mode": spec["mode"], "step": meta["step"],
                         "operands": kind, "graded_task": repr(task),
                         "accuracy": {str(s): a for s, a in accuracy.items()},
                         "seconds": round(time.perf_counter() - t0, 1)})
            print(folder.name, kind, rows[-1]["accuracy"], flush=True)
    write_result(args.out, {"runs_folder": args.runs, "sizes": sizes, "n": args.n, "operands": list(OPERANDS),
                            "results": rows})


if __name__ == "__main__":
    main()
