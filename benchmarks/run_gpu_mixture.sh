#!/usr/bin/env bash
# The task mixture (App. D.6) whole, in ONE GPU call, as a smaller-scale version of the paper's:
#   OUT=/tmp/out bash benchmarks/run_gpu_mixture.sh
# `ssm-tools reproduce multiplication_mixture --scale gpu_small`: n x 2 multiplication trained to 20
# digits with addition drawn at weight 0, 0.33, 0.5, 0.6, for 250 / 500 / 800 steps, seeds 0-2 (36
# runs, 18,600 steps) of a 2 x 128 Mamba at batch 32 (the paper: 24 x 768 at batch 128; the curve,
# its legend and every run record say so: "scale_note"), graded on n x 2 multiplication alone at 20,
# 40 and 100 digits (n = 50); the figure is accuracy at 100 digits against the weight, one line per
# budget. Builds the package with CUDA if it is not built yet (~50 s) and runs the CUDA tests of
# packed rows (if one fails, every run trains on padded rows: --no-pack). Then WORKERS processes
# train the runs side by side, longest first; every run's training ends TRAIN_END seconds after the
# reproduce command's start (--train-within: a run still training then is evaluated as it is, its
# record saying how many of its steps it trained, --evaluate-stopped), so the evaluation keeps
# EVAL_S seconds: the 36 runs in one joint rollout per size (they share the graded task) once all
# have trained, the GPU to themselves, ending MARGIN_S seconds before CALL_S (--max-seconds; a size
# predicted to overrun is recorded as skipped, never dropped). Everything stops CALL_S seconds after
# the script's start (SIGINT); the curve is written as runs end.
#
# What fits (results/reproduction_notes.md, "The mixture in one GPU call"): the mixture's training
# episodes average 575 tokens (653 at w = 0, 521 at w = 0.6), so the sweep is 18,600 x 32 x 575 =
# 342M tokens; the 2 x 256 Mamba trained 2.5M tokens/s over 4-8 processes on the H200
# (results/tasks_notes.md), the 2 x 128 no slower: ~140 s of training beside the ~370 s left after
# the build, the tests, the evaluation's EVAL_S and the margins.
#
# Results ($OUT, at most 8 files): mixture.tar.gz (gpu_small/{curve.json,curve.png,command.txt} and
# gpu_small/logs/: the command's output, every run's log.csv), curve.png, summary.txt (every run,
# then the mean accuracy over seeds per budget, weight and size), plan.txt, packed_tests.txt, build.txt if built.
# Dry run on a CPU (a few steps, small sizes; as the tests do):
#   DEVICE=cpu STEPS=2 ADD_WEIGHTS=0,0.5 SEEDS=0 SIZES=3,4 N=2 WORKERS=2 CALL_S=240 EVAL_S=60 \
#     OUT=/tmp/dry bash benchmarks/run_gpu_mixture.sh
# Uses the machine's python3 (with a CUDA torch, numpy, tqdm, matplotlib); no venv, no downloads.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
OUT=$(realpath -m "${OUT:-/tmp/gpu_mixture}")
CALL_S=${CALL_S:-570}
MARGIN_S=${MARGIN_S:-20}
EVAL_S=${EVAL_S:-100}  # the joint evaluation of every run (teacher-forced pass, then decoding)
# At most about ten processes a call: 29 runs side by side ran the H200 out of memory (results/tasks_notes.md).
WORKERS=${WORKERS:-8}
DEVICE=${DEVICE:-cuda}
SCALE=${SCALE:-gpu_small}
PYTHON=${PYTHON:-python3}
STEPS=${STEPS:-}  # one step budget instead of the scale's (a dry run)
ADD_WEIGHTS=${ADD_WEIGHTS:-}
SEEDS=${SEEDS:-}
SIZES=${SIZES:-}
N=${N:-}
ARGS=${ARGS:-}
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
work=$OUT/work
rm -rf "$work"  # every run trains afresh in this call
mkdir -p "$work/cwd" "$work/gpu_small/logs"
if [[ $DEVICE == cuda ]] && ! "$PYTHON" -c "import sys, torch, ssm_tools._C
sys.exit(not torch._C._dispatch_has_kernel_for_dispatch_key('ssm_tools::selective_scan_fwd', 'CUDA'))" 2>/dev/null; then
  "$PYTHON" -m pip install --no-build-isolation --no-deps -q -e . -C cmake.define.SSM_TOOLS_CUDA=ON \
    -C build-dir=build/gpu > "$OUT/build.txt" 2>&1 || { tail -30 "$OUT/build.txt"; exit 1; }
fi
echo "built in $((SECONDS - start)) s"
if [[ $DEVICE == cuda ]] && ! timeout 90 "$PYTHON" -m pytest -q -x -p no:cacheprovider -k packed tests/test_cuda.py \
    tests/test_cuda_models.py tests/test_mamba_block_ops.py > "$OUT/packed_tests.txt" 2>&1; then
  ARGS="$ARGS --no-pack"
  echo "packed-row CUDA tests failed: training on padded rows"
fi
tail -1 "$OUT/packed_tests.txt" 2>/dev/null
train_end=$((CALL_S - MARGIN_S - EVAL_S - (SECONDS - start)))
eval_end=$((CALL_S - MARGIN_S - (SECONDS - start)))
if ((train_end < 10)); then
  echo "no time left to train: CALL_S $CALL_S, EVAL_S $EVAL_S, MARGIN_S $MARGIN_S, $((SECONDS - start)) s spent" >&2
  exit 2
fi
{
  echo "multiplication_mixture scale $SCALE device $DEVICE workers $WORKERS${STEPS:+ steps $STEPS}${ADD_WEIGHTS:+ weights $ADD_WEIGHTS}${SEEDS:+ seeds $SEEDS}${SIZES:+ sizes $SIZES}${N:+ n $N} $ARGS"
  echo "started after $((SECONDS - start)) s; training ends within $train_end s, evaluation within $eval_end s (budget $EVAL_S s)"
  [[ $DEVICE == cuda ]] && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
} | tee "$OUT/plan.txt"
# shellcheck disable=SC2086  # ARGS is a list of options
(cd "$work/cwd" && timeout --signal=INT --kill-after=15 $((CALL_S - (SECONDS - start))) \
  "$PYTHON" -m ssm_tools.cli reproduce multiplication_mixture --scale "$SCALE" --device "$DEVICE" \
  --workers "$WORKERS" --joint-eval --train-within "$train_end" --evaluate-stopped \
  --max-eval-seconds "$EVAL_S" --max-seconds "$eval_end" --out "$work/gpu_small" \
  ${STEPS:+--steps "$STEPS"} ${ADD_WEIGHTS:+--add-weights "$ADD_WEIGHTS"} ${SEEDS:+--seeds "$SEEDS"} \
  ${SIZES:+--sizes "$SIZES"} ${N:+--n "$N"} $ARGS > "$work/gpu_small/logs/reproduce.txt" 2>&1)
status=$?
for csv in "$work"/cwd/runs/reproduce-multiplication_mixture-"$SCALE"/*/log.csv; do
  [[ -f $csv ]] && cp "$csv" "$work/gpu_small/logs/$(basename "$(dirname "$csv")").log.csv"
done
grep -E "^evaluated|^exact|rror|: trained " "$work/gpu_small/logs/reproduce.txt" | cut -c1-300 > "$OUT/summary.txt"
"$PYTHON" - "$work/gpu_small/curve.json" >> "$OUT/summary.txt" <<'EOF'
import collections, json, pathlib, sys
path = pathlib.Path(sys.argv[1])
if not path.is_file():
    sys.exit(print("no curve.json: no run ended"))
curve = json.loads(path.read_text())
print(curve.get("scale_note", ""))
cells = collections.defaultdict(list)
for r in curve["runs"]:
    s = r["setting"]
    print("add_weight", s["add_weight"], "steps", s["steps"], "seed", r["seed"], "trained", r.get("trained_steps"),
          "loss", r.get("final_loss"), "train_s", r.get("train_seconds"), "eval_s", r.get("eval_seconds"),
          "accuracy", r["accuracy"], "exact_trajectory", r.get("exact_trajectory"))
    cells[s["steps"], s["add_weight"]].append(r["accuracy"])
for (steps, weight), runs in sorted(cells.items()):
    means = []
    for size in sorted(runs[0], key=int):
        graded = [a[size] for a in runs if a.get(size) is not None]
        means.append(f"{size} digits {sum(graded) / len(graded):.3f} ({len(graded)} seeds)" if graded
                     else f"{size} digits none decoded")
    print(f"steps {steps} add_weight {weight}: mean accuracy at " + ", ".join(means))
for r in curve.get("failed", []):
    print("FAILED", r.get("setting"), "seed", r["seed"], r["error"][:200])
EOF
[[ -f $work/gpu_small/curve.png ]] && cp "$work/gpu_small/curve.png" "$OUT/curve.png"
tar -czf "$OUT/mixture.tar.gz" -C "$work" gpu_small  # not the checkpoints (cwd/runs)
rm -rf "$work"
echo "=== run_gpu_mixture.sh status $status after $((SECONDS - start)) s"
tail -60 "$OUT/summary.txt"
exit $status
