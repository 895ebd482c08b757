"""Merge the curve of a later GPU call into the committed curve of the same experiment, as
`reproduce --merge` does inside one call (a run of the same model, mode, setting and seed replaces
the old one; the others are appended; a failed run that the later call finished leaves "failed"):

    python benchmarks/curve_merge.py results/logical_graph/gpu/curve.json /tmp/call/logical_graph/gpu/curve.json

The curves must be of one experiment (same task, scale, device, training sizes, task options and
model sizes: reproduce.merge_curves names the field that differs). The merged curve, its command.txt
and PNG are written over the first curve's folder.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ssm_tools.reproduce import merge_curves, replace_runs, run_key, summarize, write_curve


def merge(old: dict, new: dict) -> dict:
    merged = merge_curves(old, {**new, "runs": []})
    merged["commands"] = [c for c in old["commands"] if c not in new["commands"]] + new["commands"]
    done = {run_key(r) for r in new["runs"]}
    failed = [r for r in old.get("failed", []) if run_key(r) not in done] + new.get("failed", [])
    merged.pop("failed", None)
    return summarize({**merged, "runs": replace_runs(old["runs"], new["runs"]), **({"failed": failed} if failed else {})})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("curve", help="the committed curve.json, rewritten in place")
    ap.add_argument("later", help="the later call's curve.json")
    args = ap.parse_args()
    old, new = (json.loads(Path(p).read_text()) for p in (args.curve, args.later))
    write_curve(merge(old, new), Path(args.curve).parent)


if __name__ == "__main__":
    main()
