#!/usr/bin/env bash
# Native checks of the tools (csrc/tools/), no GPU:
#   1. the C++ unit tests (csrc/tools/tests/test_*.cpp) built with AddressSanitizer + UBSan, and with
#      ThreadSanitizer, and run;
#   2. the C++ fuzz target (csrc/tools/tests/fuzz_protocol.cpp) under the same sanitizers: a libFuzzer
#      build when clang is available, else its standalone structured-random driver;
#   3. differential fuzzing of the C++ loop against the Python reference loop with atheris.
# Time budget (CI time matters): FUZZ_SECONDS each for 2 and 3 (default 25).
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-25}
PY=${PY:-.venv/bin/python}
OUT=build/native
mkdir -p "$OUT/obj"

SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
CXX=${CXX:-g++}
FLAGS="-std=c++17 -O1 -g $SAN -Icsrc -pthread"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1

echo "== native-check: building csrc/tools with ASan+UBSan ($CXX)"
objs=() pids=()
for src in csrc/tools/*.cpp; do
  obj="$OUT/obj/$(basename "${src%.cpp}").o"
  $CXX $FLAGS -c "$src" -o "$obj" &
  objs+=("$obj") pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done  # a bare `wait` would hide a failed compile
$CXX $FLAGS csrc/tools/tests/test_*.cpp csrc/tools/tests/run_tests.cpp "${objs[@]}" -o "$OUT/unit_tests"

echo "== native-check: C++ unit tests (ASan+UBSan)"
"$OUT/unit_tests"

# The thread pool and the parallel Env under ThreadSanitizer (the unit tests run episodes on 4 threads).
echo "== native-check: C++ unit tests (TSan)"
$CXX -std=c++17 -O1 -g -fsanitize=thread -Icsrc -pthread csrc/tools/*.cpp csrc/tools/tests/test_*.cpp \
  csrc/tools/tests/run_tests.cpp -o "$OUT/unit_tests_tsan"
TSAN_OPTIONS=halt_on_error=1 "$OUT/unit_tests_tsan" | tail -1

echo "== native-check: fuzz_protocol (C++) for ${FUZZ_SECONDS}s"
if command -v clang++ >/dev/null; then
  clang++ -std=c++17 -O1 -g -Icsrc -pthread -fsanitize=fuzzer,address,undefined -DSSM_TOOLS_LIBFUZZER \
    csrc/tools/*.cpp csrc/tools/tests/fuzz_protocol.cpp -o "$OUT/fuzz_protocol"
  "$OUT/fuzz_protocol" -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -timeout=10 -artifact_prefix="$OUT/"
else
  $CXX $FLAGS csrc/tools/tests/fuzz_protocol.cpp "${objs[@]}" -o "$OUT/fuzz_protocol"
  "$OUT/fuzz_protocol" "$FUZZ_SECONDS"
fi

echo "== native-check: differential fuzzing C++ loop vs Python reference (atheris) for ${FUZZ_SECONDS}s"
if ! "$PY" tests/fuzz_protocol.py -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=4096 -timeout=10 \
    -artifact_prefix="$OUT/" > "$OUT/atheris.log" 2>&1; then
  grep -v "^INFO: Instrumenting" "$OUT/atheris.log" | tail -40
  exit 1
fi
grep -E "^Done" "$OUT/atheris.log"
echo "native-check: ok"
