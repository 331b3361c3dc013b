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

.PHONY: setup demo cluster test lint typecheck pytest bench-train bench-serve bench-retention bench-drift clean system-deps

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

# Debian packages the tests and benches run for real (never `playwright install`: it downloads a
# browser): chromium (browser tests), prometheus + promtool and alertmanager (rule tests, the
# cluster), nginx (the cluster's load balancer), wrk (bench-serve), postgresql (store and cluster).
SYSTEM_CMDS := chromium:chromium promtool:prometheus prometheus-alertmanager:prometheus-alertmanager \
  nginx:nginx wrk:wrk
system-deps:
	@missing=""; for pair in $(SYSTEM_CMDS); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null || [ -x /usr/sbin/$$cmd ] || missing="$$missing $$pkg"; done; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing Debian packages:$$missing"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $$missing >/dev/null; } || \
	    echo "NOTICE: could not install$$missing; the tests that need them will be SKIPPED"; \
	  else echo "NOTICE: missing$$missing (sudo apt-get install$$missing); tests that need them will be SKIPPED"; fi; fi

demo: setup
	$(BIN)/mnistops demo $(DEMO_ARGS)

# The production topology on loopback: PostgreSQL, mlflow server, 2 API replicas behind nginx, monitor,
# controller, worker, Prometheus, Alertmanager (state in $(MNISTOPS_HOME)/cluster); Ctrl+C stops all.
cluster: setup
	$(BIN)/mnistops up --cluster $(CLUSTER_ARGS)

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

# wrk is the bench's only load generator (a slower client would change every figure): install it
# when missing (Debian, as root), else stop with the command to run. Never a silent fallback.
bench-serve: setup
	@command -v wrk >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then export DEBIAN_FRONTEND=noninteractive; echo "installing wrk"; \
	    apt-get install -y -q wrk >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; }; fi; \
	  command -v wrk >/dev/null || { echo "error: bench-serve needs wrk: sudo apt-get install -y wrk" >&2; exit 1; }; }
	$(PY) bench/bench_serve.py $(BENCH_SERVE_ARGS)

# a writer's commit latency on SQLite while retention prunes 100k rows (archive on)
bench-retention: setup
	$(PY) bench/bench_retention.py

bench-drift: setup
	$(PY) bench/bench_drift.py

clean:
	rm -rf $(VENV) .mnistops .pytest_cache .mypy_cache .ruff_cache
