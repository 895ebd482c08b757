# Two commands do everything on a fresh machine, in either order (see README):
#   make test        set up, build, run the tests
#   make reproduce   set up, build, run the CPU length-generalization reproduction of addition
# `make build` rebuilds the extension after a C++ change, and installs the configs after a change to
# tasks/*.toml (incremental).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.deps-installed

.PHONY: setup build reproduce test cuda-check native-check wheel-check clean

$(STAMP): requirements.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	touch $(STAMP)

setup: $(STAMP)

# flock: concurrent rebuilds (several shells, helpers) share one build folder.
build: $(STAMP)
	flock /tmp/ssm-tools-build.lock $(PIP) install -q --no-build-isolation --no-deps -e .

reproduce: build
	$(VENV)/bin/ssm-tools reproduce addition --scale cpu

# Two pytest-xdist workers: the slow tests start first, the longest first (tests/conftest.py), and a
# worker that runs out of tests takes half of the other's queue (worksteal).
test: build
	$(PY) -m pytest -q -n 2 --dist worksteal tests

# Compile every CUDA kernel with nvcc (sm_90 + compute_80 PTX) and the CUDA binding against torch's
# headers (compile only: no GPU needed).
cuda-check: $(STAMP)
	bash .ci/cuda_compile.sh

# C++ unit tests of the tools under AddressSanitizer + UBSan, and bounded fuzzing of the parser/tools.
native-check: build
	bash .ci/native_checks.sh

# Build the wheel, install it into a fresh venv outside the tree, and run the CLI from there.
wheel-check: $(STAMP)
	bash .ci/wheel_smoke.sh

clean:
	rm -rf build $(VENV) python/ssm_tools/*.so
