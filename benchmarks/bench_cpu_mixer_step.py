"""The CPU cost of one Mamba mixer decode step (tiny preset's first layer): ops.mamba_mixer_step, the
model's step, against the same step through the separate ops (reference.separate_ops_mixer_step:
conv update, x_proj, mamba_state_update), interleaved rounds in one process, CPU time of this process
on one thread; min and median per call. The whole model's step before/after is
bench_cpu_mamba_step.py --baseline; this isolates the mixer from the shared machine's noise.

    python benchmarks/bench_cpu_mixer_step.py [--batches 1 100] [--out results/bench_cpu_mixer_step.json]
"""
import argparse
import statistics
import time

import torch

from _results import write_result  # benchmarks/_results.py (run as a script: its folder is on sys.path)
from ssm_tools import vocab as V
from ssm_tools.models import build_model, preset
from ssm_tools.models.mamba import MambaMixer
from ssm_tools.reference import separate_ops_mixer_step


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 100])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--out", default="results/bench_cpu_mixer_step.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = dict(preset("mamba", "tiny"), vocab_size=V.VOCAB_SIZE)
    model = build_model("mamba", **cfg).eval()
    mixer = model.mixers[0]
    steps = {"one_op": MambaMixer.step, "separate_ops": separate_ops_mixer_step}
    rows = []
    for batch in args.batches:
        h = torch.randn(batch, mixer.in_proj.in_features)
        state = model.init_state(batch)[0]
        us = {k: [] for k in steps}
        for _ in range(args.rounds):  # interleaved, so that load changes hit both alike
            for name, step in steps.items():
                t0 = time.process_time()
                with torch.no_grad():
                    for _ in range(args.calls):
                        step(mixer, h, state)
                us[name].append((time.process_time() - t0) / args.calls * 1e6)
        row = {"batch": batch, **{f"{k}_cpu_us_min": min(v) for k, v in us.items()},
               **{f"{k}_cpu_us_median": statistics.median(v) for k, v in us.items()}, "cpu_us_all": us}
        row["speedup_one_op_vs_separate_median"] = row["separate_ops_cpu_us_median"] / row["one_op_cpu_us_median"]
        print({k: round(v, 2) for k, v in row.items() if isinstance(v, float)}, flush=True)
        rows.append(row)
    write_result(args.out, {"model": {"name": "mamba", **cfg}, "layer": 0, "threads": 1, "calls": args.calls,
                            "rounds": args.rounds, "per_batch": rows})


if __name__ == "__main__":
    main()
