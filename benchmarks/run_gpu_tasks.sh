#!/usr/bin/env bash
# The paper-scale curves of the long-episode tasks (logical graph, Tower of Hanoi iterative and
# recursive, coding) in one GPU call whose time is limited (the device tool's calls: 10 minutes):
#   OUT=/tmp/out CALL_S=400 bash benchmarks/run_gpu_tasks.sh
# Builds the package with CUDA if it is not built yet, then runs `ssm-tools reproduce <task> --scale
# paper --device cuda` for every task at the same time, each task's runs side by side in their own
# processes (--workers): they train together (large kernels share the GPU well) and evaluate one at a
# time (greedy decoding time-slices badly between processes: results/tasks_notes.md). Each run's
# evaluation has its own time budget (--max-eval-seconds: a size predicted to overrun is recorded as
# skipped, never dropped) and ends MARGIN_S seconds before CALL_S (--max-seconds); everything stops
# CALL_S seconds after the start (SIGINT), and since each curve is written as its runs finish, a call
# cut short keeps the runs that ended. TASKS="task/workers/eval_seconds[/model:mode,...] ..." chooses the tasks (and their runs).
# Results: $OUT/tasks.tar.gz holds <task>/gpu/{curve.json,curve.png,command.txt} and the logs
# (<task>/gpu/logs/: the command's output, every run's log.csv); $OUT/summary.txt the accuracies.
# Uses the machine's python3 (with a CUDA torch, numpy, tqdm, matplotlib); no venv, no downloads.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_tasks}
CALL_S=${CALL_S:-400}
MARGIN_S=${MARGIN_S:-30}
TASKS=${TASKS:-"logical_graph/6/260 hanoi_recursive/3/100 coding/4/120
  hanoi_iterative/8/260/mamba:interactive,mamba:single_turn,lstm:interactive"}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
ARGS=${ARGS:-}
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
start=$SECONDS
work=$OUT/work
mkdir -p "$work"
if [[ $DEVICE == cuda ]] && ! python3 -c "import sys, torch, ssm_tools._C
sys.exit(not torch._C._dispatch_has_kernel_for_dispatch_key('ssm_tools::selective_scan_fwd', 'CUDA'))" 2>/dev/null; then
  python3 -m pip install --no-build-isolation --no-deps -q -e . -C cmake.define.SSM_TOOLS_CUDA=ON \
    -C build-dir=build/gpu > "$work/build.txt" 2>&1 || { tail -30 "$work/build.txt"; exit 1; }
fi
echo "built in $((SECONDS - start)) s"
pids=()
for spec in $TASKS; do
  IFS=/ read -r task workers eval_s runs <<< "$spec"
  rm -rf "runs/reproduce-$task-paper"  # every run trains afresh in this call
  mkdir -p "$work/$task/gpu/logs"
  # shellcheck disable=SC2086  # ARGS is a list of options
  timeout --signal=INT --kill-after=15 $((CALL_S - (SECONDS - start))) \
    "$PYTHON" -m ssm_tools.cli reproduce "$task" --scale paper --device "$DEVICE" --workers "$workers" \
    --max-eval-seconds "$eval_s" --max-seconds $((CALL_S - MARGIN_S - (SECONDS - start))) \
    --out "$work/$task/gpu" ${runs:+--runs "$runs"} $ARGS > "$work/$task/gpu/logs/reproduce.txt" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=1
done
for spec in $TASKS; do
  task=${spec%%/*}
  for csv in runs/reproduce-"$task"-paper/*/log.csv; do
    [[ -f $csv ]] && cp "$csv" "$work/$task/gpu/logs/$(basename "$(dirname "$csv")").log.csv"
  done
  grep -E "^evaluated|^\{|rror" "$work/$task/gpu/logs/reproduce.txt" | sed "s/^/$task: /" | cut -c1-400
done > "$OUT/summary.txt"
"$PYTHON" - "$work" >> "$OUT/summary.txt" <<'EOF'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*/gpu/curve.json")):
    curve = json.loads(path.read_text())
    for r in curve["runs"]:
        print(curve["task"], r["model"], r["mode"], "seed", r["seed"], "train_s", r.get("train_seconds"),
              "eval_s", r.get("eval_seconds_per_size"), "accuracy", r["accuracy"])
EOF
tar -czf "$OUT/tasks.tar.gz" -C "$work" .
rm -rf "$work"
echo "=== run_gpu_tasks.sh status $status after $((SECONDS - start)) s"
cat "$OUT/summary.txt" | tail -60
exit $status
