# The two commands a newcomer needs: `make run` and `make test`. Each installs what is missing
# into .venv first. torch is pinned to 2.13.0, the CPU build (a bare `torch` pulls CUDA).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
SYS_PY := $(shell command -v $(PY) || command -v python3)
export HF_HUB_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
# Serve's fast paths, read when a cluster starts (README "Speed"): user code on each replica's
# event loop, gRPC between deployments, HAProxy in front of the Ingress. `make run` serves with
# them and `make test` tests under them; set one to 0 to turn it off (`make run VAR=0`).
export RAY_SERVE_THROUGHPUT_OPTIMIZED ?= 1
export RAY_SERVE_USE_GRPC_BY_DEFAULT ?= 1
export RAY_SERVE_ENABLE_HA_PROXY ?= 1

.PHONY: run test install lint results bench lock

# Installs exactly the pins of requirements.lock (each file checked against its sha256; torch
# 2.13.0+cpu comes from the machine's wheel folder, --find-links in the lock), then the project
# itself without touching them. tools/lockfile.py refuses a lock that pyproject.toml has moved on.
$(STAMP): pyproject.toml $(LOCK)
	$(SYS_PY) tools/lockfile.py check
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Re-resolves the lock after a change to pyproject.toml, keeping every pin that still fits;
# `make lock LOCK_ARGS=--upgrade` moves everything to the newest releases instead.
lock:
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	test -x $(BIN)/pip-compile || $(BIN)/pip install -q pip-tools
	$(BIN)/pip-compile --quiet --extra dev --extra bench --generate-hashes --allow-unsafe \
	  --strip-extras --no-emit-index-url $(LOCK_ARGS) -o $(LOCK) pyproject.toml
	$(SYS_PY) tools/lockfile.py stamp

install: $(STAMP)

# serve run, stopped cleanly by SIGTERM as by Ctrl-C (tools/serve_run.py says why)
run: $(STAMP)
	$(BIN)/python tools/serve_run.py serve_config.yaml

test: $(STAMP)
	$(SYS_PY) tools/lockfile.py check
	$(BIN)/ruff check core deployments graphs loadtest benchmarks paretoserve_cli tests
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check core deployments graphs loadtest benchmarks paretoserve_cli tests
	$(BIN)/ruff format --check core deployments graphs loadtest benchmarks paretoserve_cli tests

bench: $(STAMP)
	$(BIN)/paretoserve bench --arms 3 --json docs/bench/k3.json
	$(BIN)/paretoserve bench --arms 16 --json docs/bench/k16.json
	$(BIN)/paretoserve bench --arms 64 --json docs/bench/k64.json

results: $(STAMP)
	$(BIN)/python docs/make_results.py > docs/results/tables.md
