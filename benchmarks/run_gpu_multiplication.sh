#!/usr/bin/env bash
# One paper-scale run of n x 1 or n x 2 multiplication in ONE GPU call, training and evaluation:
#   TASK=multiplication_nx2 SEED=1 LR=5e-4 OUT=/tmp/out bash benchmarks/run_gpu_multiplication.sh
# Builds the package with CUDA (about 40 s) unless built, trains the 24 x 768 Mamba with the pointer
# memory (the paper's recipe: STEPS=2000, batch 128, bf16 autocast) for seed SEED at learning rate LR,
# evaluates it at every test size up to 1,000 digits (n=N per size), and merges the run into the
# curve $BASE (default results/$TASK/gpu/curve.json, copied to $OUT first; BASE= starts a new one).
# Nothing is lost to the call's end (CALL_S seconds, default 570, from the script's start):
#   - training gets what is left after the build, STARTUP_S (20 s), EVAL_S seconds (default: the
#     task's evaluation time, below) and MARGIN_S; a run that would overrun stops there and is evaluated as it is, its
#     record saying how many steps it trained (--evaluate-stopped: "trained_steps"); its checkpoint
#     stays in runs/, so the same command on the same (still warm) machine resumes it;
#   - every evaluation ends MARGIN_S seconds before CALL_S (--max-seconds): a size predicted to
#     overrun is recorded as skipped (null), never dropped with the others.
# A run longer than one call spans two: EVAL_S=0 EVALUATE_STOPPED=0 makes the first call train only
# (the stopped run checkpoints in runs/ and is listed as unfinished in curve.json); the same command
# with the defaults, issued at once on the still-warm machine, resumes it, ends its training and
# evaluates it. A machine lost in between costs the first call, not the run's record.
# Writes to $OUT (at most 8 files come back): curve.json, curve.png, command.txt, reproduce.txt (the
# command's output), train_log.csv (loss per step), plan.txt (this call's budget), build.txt.
#
# What fits in one call (results/gpu/s13/channel_first/bench_train_step_graph.json, "task_batches":
# the 24 x 768 eager step on real batches of 128 episodes packed into rows, H100): n x 2 (1..10 digits,
# ~50k real tokens) 213 ms a step; n x 1 (about half the tokens) ~120 ms by the same rate. Evaluation at n=100 decodes ~2.4 ms
# per step (float32) over the sizes' step bounds: n x 1 10..1,000 digits ~135 s, n x 2 246 s measured.
# Build ~55 s; start-up 20 s; MARGIN_S 20 s.
#   task   EVAL_S (to 1,000)   training left of 570 s   steps that fit (packed)
#   n x 1        150 s               ~325 s                 ~2,000 (the paper's, ~45 s to spare)
#   n x 2        260 s               ~215 s                   ~870
# So n x 2's 2,000 steps (~500 s) span two calls on one warm machine: EVAL_S=0 EVALUATE_STOPPED=0
# first (it trains ~1,900 steps), then the defaults (the rest and the evaluation). NPROC=2 on a
# 2-GPU machine halves the step (data-parallel, --nproc) where one is lent.
#
# One point of the task mixture (App. D.6) the same way, e.g. weight 0.5 for 250 steps, graded to 200
# digits: TASK=multiplication_mixture STEPS=250 ARGS="--add-weights 0.5" SIZES=20,50,100,200 EVAL_S=60.
# Its training episodes reach 20 digits (up to 1,137 tokens): the whole sweep (36 runs, 18,600 steps)
# is about 2 GPU-hours of training at the packed rate (~0.4 s a step), not one session's device time.
#
# LR_GRID=3e-4,1e-3,3e-3 chooses the learning rate in the same call, as the paper did, on a held-out
# size: VAL_STEPS (100) steps per rate, graded at VAL_SIZE (30) digits (~60 s a rate for n x 2 by the
# numbers above), recorded in curve.json (lr_selections); that time comes out of the run's training.
#
# Dry run on a CPU (tiny model, a few steps, small sizes), as the tests do:
#   DEVICE=cpu STEPS=3 SIZES=10,20 N=2 CALL_S=120 EVAL_S=30 OUT=/tmp/dry bash benchmarks/run_gpu_multiplication.sh
# Uses the machine's python3 (CUDA torch, numpy, tqdm, matplotlib); no venv, no downloads.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
TASK=${TASK:-multiplication_nx2}
SEED=${SEED:-0}
LR=${LR:-5e-4}
LR_GRID=${LR_GRID:-}  # e.g. 3e-4,1e-3,3e-3: choose the lr first, at VAL_SIZE digits (not a test size)
VAL_SIZE=${VAL_SIZE:-30}
VAL_STEPS=${VAL_STEPS:-100}
STEPS=${STEPS:-2000}
DEVICE=${DEVICE:-cuda}
SCALE=${SCALE:-$([[ $DEVICE == cpu ]] && echo cpu || echo paper)}
CALL_S=${CALL_S:-570}
MARGIN_S=${MARGIN_S:-20}
STARTUP_S=${STARTUP_S:-20}  # Python, torch, CUDA and the model before the first step
N=${N:-100}
SIZES=${SIZES:-10,20,50,100,200,500,1000}
NPROC=${NPROC:-1}
EVALUATE_STOPPED=${EVALUATE_STOPPED:-1}  # 0: a run stopped by the call's end is not evaluated (resumed later)
BASE=${BASE-$([[ $DEVICE == cuda ]] && echo "results/$TASK/gpu/curve.json")}
OUT=$(realpath -m "${OUT:-/tmp/gpu_multiplication}")
WORK=$(realpath -m "${WORK:-.}")  # the run's checkpoint goes to $WORK/runs/ (default: the checkout's)
PYTHON=${PYTHON:-python3}
ARGS=${ARGS:-}
case $TASK in
  multiplication_nx1) EVAL_S=${EVAL_S:-150} ;;
  multiplication_nx2 | multiplication_mixture) EVAL_S=${EVAL_S:-260} ;;
  *) echo "TASK must be multiplication_nx1, multiplication_nx2 or multiplication_mixture, got $TASK" >&2; exit 2 ;;
esac
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
mkdir -p "$OUT"
if [[ -n $BASE && -f $BASE && ! -f $OUT/curve.json ]]; then
  cp "$BASE" "$OUT/curve.json"
fi
if [[ $DEVICE == cuda ]] && ! "$PYTHON" -c "import sys, torch, ssm_tools._C
sys.exit(not torch._C._dispatch_has_kernel_for_dispatch_key('ssm_tools::selective_scan_fwd', 'CUDA'))" 2>/dev/null; then
  "$PYTHON" -m pip install --no-build-isolation --no-deps -q -e . -C cmake.define.SSM_TOOLS_CUDA=ON \
    -C build-dir=build/gpu > "$OUT/build.txt" 2>&1 || { tail -30 "$OUT/build.txt"; exit 1; }
fi
lr_args="--lr $LR"
stopped_args=--evaluate-stopped
[[ $EVALUATE_STOPPED == 0 ]] && stopped_args=
[[ -n $LR_GRID ]] && lr_args="--lr-grid $LR_GRID --val-size $VAL_SIZE --val-steps $VAL_STEPS"
train_s=$((CALL_S - (SECONDS - start) - STARTUP_S - EVAL_S - MARGIN_S))
eval_end_s=$((CALL_S - (SECONDS - start) - MARGIN_S))
if ((train_s < 10)); then
  echo "no time left to train: CALL_S $CALL_S, STARTUP_S $STARTUP_S, EVAL_S $EVAL_S, MARGIN_S $MARGIN_S, $((SECONDS - start)) s spent" >&2
  exit 2
fi
{
  echo "task $TASK seed $SEED $lr_args steps $STEPS scale $SCALE device $DEVICE nproc $NPROC n $N sizes $SIZES"
  echo "built after $((SECONDS - start)) s; training budget $train_s s; evaluations end within $eval_end_s s"
  [[ $DEVICE == cuda ]] && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
} | tee "$OUT/plan.txt"
mkdir -p "$WORK" && cd "$WORK" || exit 2
# The kill is the last resort: --max-seconds ends evaluations MARGIN_S before it.
timeout --signal=INT --kill-after=10 $((CALL_S - (SECONDS - start))) \
  "$PYTHON" -m ssm_tools.cli reproduce "$TASK" --scale "$SCALE" --device "$DEVICE" --runs mamba:interactive \
  --seeds "$SEED" $lr_args --steps "$STEPS" --n "$N" --sizes "$SIZES" --nproc "$NPROC" \
  --max-train-seconds "$train_s" $stopped_args --max-seconds "$eval_end_s" --out "$OUT" --merge $ARGS \
  > "$OUT/reproduce.txt" 2>&1
status=$?
log=$(ls -t runs/reproduce-"$TASK-$SCALE"/mamba-interactive*-seed"$SEED"/log.csv 2>/dev/null | head -1)
[[ -n $log ]] && cp "$log" "$OUT/train_log.csv"
grep -E "^evaluated|trained|rror|wrote" "$OUT/reproduce.txt" | cut -c1-300
"$PYTHON" - "$OUT/curve.json" "$SEED" <<'EOF'
import json, sys
curve = json.loads(open(sys.argv[1]).read())
for r in curve["runs"]:
    if r["model"] == "mamba" and r["mode"] == "interactive" and r["seed"] == int(sys.argv[2]):
        print("seed", r["seed"], "lr", r["train"]["lr"], "trained", r.get("trained_steps"), "of", r["train"]["steps"],
              "steps on", r.get("machine"), "train_s", r["train_seconds"], "eval_s", r["eval_seconds"],
              "accuracy", r["accuracy"], "skipped", r["skipped_sizes"])
EOF
echo "=== run_gpu_multiplication.sh status $status after $((SECONDS - start)) s"
exit $status
