"""The logical graph's cpu recipe (`reproduce --scale cpu`, Mamba + tool) for several seeds, with a
chosen step count and checkpoint-selection size, graded at 15 gates (5x the training size), n = 40:
how far one run's score moves with its seed, its length and the machine (results/tasks_notes.md,
"The graph's slow test on an AVX-512 machine"). One single-threaded process a run, two at a time:

    python benchmarks/graph_seed_spread.py --seeds 1,2 --steps 1000 --select-size 6 \
        --out results/logical_graph/seed_spread
    (--select-size 0: no selection, the last step)

Writes <out>/seed<S>_steps<N>_select<K>.json, each run's record as reproduce keeps it (its machine
names the CPU's vector instruction set)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ssm_tools import reproduce as R


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--select-size", type=int, default=6, help="held-out size of checkpoint selection; 0: none")
    ap.add_argument("--out", default="results/logical_graph/seed_spread")
    args = ap.parse_args()
    spec = R.scale_spec("logical_graph", "cpu")
    train = {**spec["train"], "steps": args.steps, "select_size": args.select_size}
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    jobs = [dict(config=R.setting_config("logical_graph", "interactive", None, spec["config"]), model="mamba",
                 model_scale=spec["models"]["mamba"], train=train, seed=seed, sizes=[15], n=40,
                 out_dir=out / "runs" / f"seed{seed}", device="cpu") for seed in seeds]
    out.mkdir(parents=True, exist_ok=True)
    for seed, run in zip(seeds, R.run_parallel(jobs)):
        path = out / f"seed{seed}_steps{args.steps}_select{args.select_size}.json"
        path.write_text(json.dumps(run, indent=1))
        print(path, run["accuracy"], run["exact_trajectory"], run.get("selection", {}).get("best_step"))


if __name__ == "__main__":
    main()
