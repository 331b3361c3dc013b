# Every target bootstraps .venv itself: on a fresh machine `make demo` and `make test` are enough.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_STAMP := .mnistops/data/.verified
export MNISTOPS_HOME ?= .mnistops
BENCH_TRAIN_ARGS ?= --repeats 3  # alternating seed/mnistops pairs: median and pooled ratio

.PHONY: setup demo test lint typecheck pytest bench-train bench-serve bench-drift clean system-deps

setup: $(STAMP) $(DATA_STAMP) system-deps

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel lies on this disk (a bare `torch` would pull CUDA builds)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

$(DATA_STAMP): $(STAMP)
	$(BIN)/mnistops data fetch
	@touch $(DATA_STAMP)

# Debian chromium for the browser tests (never `playwright install`: it downloads a browser).
system-deps:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; \
	  else echo "note: chromium missing; browser tests will be skipped (sudo apt-get install chromium)"; fi; }

demo: setup
	$(BIN)/mnistops demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy src

pytest: setup
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench-train: setup
	$(PY) bench/bench_train.py $(BENCH_TRAIN_ARGS)

bench-serve: setup
	$(PY) bench/bench_serve.py

bench-drift: setup
	$(PY) bench/bench_drift.py

clean:
	rm -rf $(VENV) .mnistops .pytest_cache .mypy_cache .ruff_cache
