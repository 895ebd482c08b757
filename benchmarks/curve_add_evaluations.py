"""Put runs whose evaluation failed back on their curve, scored from `ssm-tools evaluate` reports of
their checkpoints (a run that trained and then lost its evaluation, e.g. to a GPU shared with other
runs running out of memory, keeps its training record under the curve's "failed"):

    python benchmarks/curve_add_evaluations.py results/logical_graph/gpu/curve.json \
        --run mamba:interactive:0 --exact s0_exact.json --decoded s0_decoded.json [--run ...]

Each --run takes the record of that (model, mode, seed) out of "failed", drops its error, and fills
"exact_trajectory" from the --exact report and "accuracy" from the --decoded one (sizes a report
lacks are null, listed as skipped with the reason); the reports' commands go to "evaluated_by".
The reports must grade the curve's task with the run's trained step and the curve's episodes per
size. The curve and its PNG are rewritten in place.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ssm_tools.plots import plot_curve


def report(path: str | None, record: dict, n: int, key: str) -> tuple[dict, str | None]:
    if path is None:
        return {}, None
    rep = json.loads(Path(path).read_text())
    if rep.get("step") != record["trained_steps"] or rep.get("n") != n or key not in rep:
        raise SystemExit(f"{path}: step {rep.get('step')} / n {rep.get('n')} / {key!r} do not match the run's "
                         f"{record['trained_steps']} steps and the curve's n = {n}")
    return rep[key], rep["command"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("curve")
    ap.add_argument("--run", action="append", required=True, help="model:mode:seed")
    ap.add_argument("--exact", action="append", default=[], help="exact-trajectory report, one per --run")
    ap.add_argument("--decoded", action="append", default=[], help="decoded report, one per --run")
    args = ap.parse_args()
    if len(args.exact) != len(args.run) or len(args.decoded) != len(args.run):
        ap.error("give one --exact and one --decoded report per --run")
    curve = json.loads(Path(args.curve).read_text())
    sizes, n = curve["test_sizes"], curve["n_per_size"]
    for run, exact_path, decoded_path in zip(args.run, args.exact, args.decoded):
        model, mode, seed = run.split(":")
        match = [r for r in curve.get("failed", []) if (r["model"], r["mode"], r["seed"]) == (model, mode, int(seed))]
        if len(match) != 1:
            raise SystemExit(f"{args.curve}: no failed run {run}")
        record = {k: v for k, v in match[0].items() if k != "error"}
        exact, exact_cmd = report(exact_path, record, n, "exact_trajectory")
        decoded, decoded_cmd = report(decoded_path, record, n, "accuracy")
        skipped = [s for s in sizes if str(s) not in decoded]
        record.update(
            test_sizes=sizes, n=n, accuracy={str(s): decoded.get(str(s)) for s in sizes},
            exact_trajectory={str(s): exact.get(str(s)) for s in sizes}, skipped_sizes=skipped,
            skip_reasons={str(s): "not decoded by the evaluation after training" for s in skipped},
            exact_trajectory_skipped_sizes=[s for s in sizes if str(s) not in exact],
            evaluation_error=match[0]["error"][:300], evaluated_by=[c for c in (exact_cmd, decoded_cmd) if c])
        curve["failed"].remove(match[0])
        curve["runs"].append(record)
    Path(args.curve).write_text(json.dumps(curve, indent=1))
    plot_curve(curve, Path(args.curve).with_suffix(".png"))


if __name__ == "__main__":
    main()
