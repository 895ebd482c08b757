"""Put runs whose evaluation failed back on their curve, scored from `ssm-tools evaluate` reports of
their checkpoints (a run that trained and then lost its evaluation, e.g. to a GPU shared with other
runs running out of memory, keeps its training record under the curve's "failed"), or fill the sizes
an evaluated run skipped (e.g. decoding cut by the call's evaluation budget):

    python benchmarks/curve_add_evaluations.py results/logical_graph/gpu/curve.json \
        --run mamba:interactive:0 --exact s0_exact.json --decoded s0_decoded.json [--run ...]

Each --run takes the record of that (model, mode, seed) out of "failed", drops its error, and fills
"exact_trajectory" from the --exact report and "accuracy" from the --decoded one (sizes a report
lacks are null, listed as skipped with the reason); the reports' commands go to "evaluated_by".
A run already on the curve keeps its scores and takes from the reports only the sizes it skipped
("-" for no report of a kind). The reports must grade the curve's task with the run's trained step
and the curve's episodes per size. The curve and its PNG are rewritten in place.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ssm_tools.plots import plot_curve


def report(path: str | None, record: dict, n: int, key: str) -> tuple[dict, str | None]:
    if path in (None, "-"):
        return {}, None
    rep = json.loads(Path(path).read_text())
    if rep.get("step") != record["trained_steps"] or rep.get("n") != n or key not in rep:
        raise SystemExit(f"{path}: step {rep.get('step')} / n {rep.get('n')} / {key!r} do not match the run's "
                         f"{record['trained_steps']} steps and the curve's n = {n}")
    return rep[key], rep["command"]


def fill_skipped(record: dict, exact_path: str | None, decoded_path: str | None, n: int) -> None:
    """The sizes `record` skipped, scored from the reports; its other scores stay."""
    exact, exact_cmd = report(exact_path, record, n, "exact_trajectory")
    decoded, decoded_cmd = report(decoded_path, record, n, "accuracy")
    for size in list(record["skipped_sizes"]):
        if str(size) in decoded:
            record["accuracy"][str(size)] = decoded[str(size)]
            record["skipped_sizes"].remove(size)
            record.get("skip_reasons", {}).pop(str(size), None)
    for size in list(record.get("exact_trajectory_skipped_sizes", [])):
        if str(size) in exact:
            record["exact_trajectory"][str(size)] = exact[str(size)]
            record["exact_trajectory_skipped_sizes"].remove(size)
    record["evaluated_by"] = record.get("evaluated_by", []) + [c for c in (exact_cmd, decoded_cmd) if c]


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
        key = (model, mode, int(seed))
        match = [r for r in curve.get("failed", []) if (r["model"], r["mode"], r["seed"]) == key]
        done = [r for r in curve["runs"] if (r["model"], r["mode"], r["seed"]) == key]
        if len(match) + len(done) != 1:
            raise SystemExit(f"{args.curve}: no failed or evaluated run {run}")
        if done:
            fill_skipped(done[0], exact_path, decoded_path, n)
            continue
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
