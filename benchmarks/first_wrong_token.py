"""Where a trained model leaves the oracle's trajectory: for each test episode of one size, the first
model token whose teacher-forced argmax differs from the oracle's, with the text before it (the
same test episodes and the same criterion as `evaluate --exact-trajectory`):

    python benchmarks/first_wrong_token.py --checkpoint coding-mamba-interactive-seed0.pt --size 24 --n 12 \
        --option name_pool=0 > first_wrong.txt

--option key=value overrides the checkpoint's task options (e.g. a default changed since it trained).
"""
from __future__ import annotations

import argparse

import torch

from ssm_tools import vocab as V
from ssm_tools.config import make_eval_task
from ssm_tools.evaluate import sample_instances
from ssm_tools.tasks import parse_option
from ssm_tools.train import load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--context", type=int, default=600, help="tokens of text shown before the wrong one")
    ap.add_argument("--option", type=parse_option, action="append", default=[], help="task option key=value")
    args = ap.parse_args()
    model, meta = load_checkpoint(args.checkpoint)
    spec = {"mode": "interactive", "options": {}, **meta["run"]["task"]}
    spec["options"] = {**spec["options"], **dict(args.option)}
    task = make_eval_task({"task": spec, "eval": meta["run"].get("eval", {})})
    transcript = task.oracle_transcript(sample_instances(task, args.size, args.n), task.max_steps(args.size))
    exact = 0
    for i in range(args.n):
        length = int(transcript.lengths[i])
        tokens = transcript.tokens[i, :length]
        with torch.no_grad():
            predicted = model(tokens[None, :-1]).argmax(-1)[0]
        wrong = ((predicted != tokens[1:]) & transcript.loss_mask[i, 1:length]).nonzero().flatten()
        if len(wrong) == 0:
            exact += 1
            print(f"--- episode {i}: exact ({length} tokens)")
            continue
        at = int(wrong[0]) + 1
        print(f"--- episode {i}: first wrong token at {at} of {length} ({len(wrong)} wrong): "
              f"oracle {V.decode(tokens[at:at + 8].tolist())!r}..., model {V.decode([int(predicted[at - 1])])!r}; before it:")
        print(V.decode(tokens[max(0, at - args.context):at].tolist()))
    print(f"=== {exact} of {args.n} exact at size {args.size} ({task!r}, step {meta['step']})")


if __name__ == "__main__":
    main()
