#!/usr/bin/env bash
# The paper-scale curves of the long-episode tasks (logical graph, Tower of Hanoi iterative and
# recursive, coding) in one GPU call whose time is limited (the device tool's calls: 10 minutes):
#   OUT=/tmp/out CALL_S=585 bash benchmarks/run_gpu_tasks.sh
# Builds the package with CUDA if it is not built yet and runs the CUDA tests of packed rows (if one
# fails, every run trains on padded rows: --no-pack). Then `ssm-tools reproduce <task> --scale paper
# --device cuda` for every task at the same time, each task from its own working folder (its own
# runs/ and evaluation lock), each run in its own process (--workers): they train side by side, each
# for its task's FIT seconds (--fit-train-seconds: the steps that fit, recorded), then evaluate
# (teacher-forced exact trajectories, then decoding one evaluation at a time per task; a mode's
# Mamba / LSTM / GRU runs jointly, in the main process, once all have trained: --joint-eval) within
# the budget (--max-eval-seconds) and MARGIN_S seconds before CALL_S (--max-seconds); sizes
# predicted to overrun, or past a 0/n (--stop-after-zero), are recorded as skipped, never dropped. Everything stops CALL_S seconds after
# the start (SIGINT); each curve is written as its runs finish, so a call cut short keeps the runs
# that ended. TASKS="task/workers/eval_seconds/fit_seconds[/model:mode,...] ..." chooses the tasks.
# Coding first builds its trajectory pools (one per mode, the scale's --pool-episodes, on every core,
# while the other tasks train; each build stops after POOL_S seconds, a pool of fewer episodes then;
# its log's "pool" lines give the time and size), then trains its runs from them:
#   OUT=/tmp/out CALL_S=585 TASKS="logical_graph/4/110/250 coding/5/150/200" bash benchmarks/run_gpu_tasks.sh
# Results: $OUT/tasks.tar.gz holds <task>/gpu/{curve.json,curve.png,command.txt} and the logs
# (<task>/gpu/logs/: the command's output, every run's log.csv); $OUT/summary.txt the scores.
# Uses the machine's python3 (with a CUDA torch, numpy, tqdm, matplotlib); no venv, no downloads.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_tasks}
CALL_S=${CALL_S:-585}
MARGIN_S=${MARGIN_S:-25}
# At most about ten processes a call: 29 runs side by side ran the H200 out of memory (results/tasks_notes.md).
TASKS=${TASKS:-"logical_graph/6/150/290 hanoi_recursive/4/60/140/mamba:single_turn,lstm:interactive,pythia:interactive"}
DEVICE=${DEVICE:-cuda}
SCALE=${SCALE:-paper}  # cpu: a dry run of this script on a CPU (tiny models)
PYTHON=${PYTHON:-python3}
ARGS=${ARGS:-}
KEEP=${KEEP:-}  # e.g. "logical_graph/mamba-interactive": those runs' checkpoints come back as $OUT/<task>-<run>.pt
POOL_S=${POOL_S:-100}  # a task's trajectory pool stops growing after this (tasks without a pool ignore it)
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
start=$SECONDS
work=$OUT/work
mkdir -p "$work"
if [[ $DEVICE == cuda ]] && ! python3 -c "import sys, torch, ssm_tools._C
sys.exit(not torch._C._dispatch_has_kernel_for_dispatch_key('ssm_tools::selective_scan_fwd', 'CUDA'))" 2>/dev/null; then
  python3 -m pip install --no-build-isolation --no-deps -q -e . -C cmake.define.SSM_TOOLS_CUDA=ON \
    -C build-dir=build/gpu > "$work/build.txt" 2>&1 || { tail -30 "$work/build.txt"; exit 1; }
fi
echo "built in $((SECONDS - start)) s"
if [[ $DEVICE == cuda ]] && ! timeout 120 python3 -m pytest -q -x -p no:cacheprovider -k packed tests/test_cuda.py \
    tests/test_cuda_models.py tests/test_mamba_block_ops.py > "$OUT/packed_tests.txt" 2>&1; then
  ARGS="$ARGS --no-pack"
  echo "packed-row CUDA tests failed: training on padded rows"
fi
tail -1 "$OUT/packed_tests.txt" 2>/dev/null
pids=()
for spec in $TASKS; do
  IFS=/ read -r task workers eval_s fit_s runs <<< "$spec"
  rm -rf "$work/$task/cwd"  # every run trains afresh in this call
  mkdir -p "$work/$task/gpu/logs" "$work/$task/cwd"
  # shellcheck disable=SC2086  # ARGS is a list of options
  (cd "$work/$task/cwd" && timeout --signal=INT --kill-after=15 $((CALL_S - (SECONDS - start))) \
    "$PYTHON" -m ssm_tools.cli reproduce "$task" --scale "$SCALE" --device "$DEVICE" --workers "$workers" \
    --fit-train-seconds "$fit_s" --max-eval-seconds "$eval_s" --pool-seconds "$POOL_S" \
    --max-seconds $((CALL_S - MARGIN_S - (SECONDS - start))) \
    --out "$work/$task/gpu" ${runs:+--runs "$runs"} $ARGS > "$work/$task/gpu/logs/reproduce.txt" 2>&1) &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=1
done
for spec in $TASKS; do
  task=${spec%%/*}
  for csv in "$work/$task"/cwd/runs/reproduce-"$task"-"$SCALE"/*/log.csv; do
    [[ -f $csv ]] && cp "$csv" "$work/$task/gpu/logs/$(basename "$(dirname "$csv")").log.csv"
  done
  grep -E "^evaluated|^exact|^pool|rror" "$work/$task/gpu/logs/reproduce.txt" | sed "s/^/$task: /" | cut -c1-400
done > "$OUT/summary.txt"
"$PYTHON" - "$work" >> "$OUT/summary.txt" <<'EOF'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*/gpu/curve.json")):
    curve = json.loads(path.read_text())
    for r in curve["runs"]:
        print(curve["task"], r["model"], r["mode"], "seed", r["seed"], "steps", r.get("trained_steps"),
              "loss", r.get("final_loss"), "train_s", r.get("train_seconds"), "eval_s", r.get("eval_seconds"),
              "accuracy", r["accuracy"], "exact_trajectory", r.get("exact_trajectory"))
    for r in curve.get("failed", []):
        print(curve["task"], r["model"], r["mode"], "seed", r["seed"], "FAILED", r["error"][:200])
EOF
tar -czf "$OUT/tasks.tar.gz" --exclude=cwd -C "$work" .  # not the checkpoints
# The device tool returns at most 8 files of $OUT, 64 MiB in all: checkpoints come back only while
# they leave room for the curves (tasks.tar.gz), the summary and the test log.
for keep in $KEEP; do
  for ckpt in "$work/${keep%%/*}"/cwd/runs/*/"${keep#*/}"*/checkpoint.pt; do
    [[ -f $ckpt ]] || continue
    if (( $(find "$OUT" -maxdepth 1 -type f | wc -l) >= 8 )) ||
       (( $(find "$OUT" -maxdepth 1 -type f -printf "%s\n" | awk -v c="$(stat -c %s "$ckpt")" '{s += $1} END {print s + c}') > 60 * 1024 * 1024 )); then
      echo "not kept (the returned files' limits): $ckpt"
      continue
    fi
    cp "$ckpt" "$OUT/${keep%%/*}-$(basename "$(dirname "$ckpt")").pt"
  done
done
rm -rf "$work"
echo "=== run_gpu_tasks.sh status $status after $((SECONDS - start)) s"
cat "$OUT/summary.txt" | tail -60
exit $status
