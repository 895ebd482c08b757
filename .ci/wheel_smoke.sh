#!/usr/bin/env bash
# The package as a user gets it: a wheel built from this checkout, installed into a fresh virtual
# environment outside the source tree, runs the CLI from a folder of its own: a short reproduction of
# addition (one model, a few steps, one test size), `evaluate` on its checkpoint, `train` from a
# shipped config, `show`, and `bench`, which must say that it needs a source checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TORCH=$(grep -E '^torch==' requirements.txt)
work=$(mktemp -d /tmp/ssm-tools-wheel.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "== wheel: build"
# The same build folder as `make build` (pyproject.toml's build-dir): the same lock (see the Makefile).
flock /tmp/ssm-tools-build.lock "$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$work/dist" .
echo "== wheel: install into a fresh venv ($work/venv) with $TORCH"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$TORCH" "$work"/dist/ssm_tools-*.whl

cd "$work"
ssm=$work/venv/bin/ssm-tools
echo "== wheel: ssm-tools from $work"
"$ssm" reproduce addition --scale cpu --runs mamba:interactive --seeds 0 --steps 30 --sizes 5 --n 8 --out curve
"$ssm" evaluate --checkpoint runs/reproduce-addition-cpu/mamba-interactive-seed0 --sizes 5 --n 8 --out evaluation.json >/dev/null
"$work/venv/bin/python" -c "
import json
curve, report = json.load(open('curve/curve.json')), json.load(open('evaluation.json'))
assert [r['accuracy'].keys() for r in curve['runs']] == [{'5'}] and report['step'] == 30, (curve, report)
print('reproduce:', curve['runs'][0]['accuracy'], 'evaluate:', report['accuracy'])"
"$ssm" train --config addition --steps 2 --batch-size 4 --quiet --out run
"$ssm" show addition --size 3 >/dev/null
if "$ssm" bench 2>bench.err; then echo "bench ran without a source checkout"; exit 1; fi
grep -q "source checkout" bench.err
echo "wheel smoke: ok"
