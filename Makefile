# The two commands a newcomer needs: `make run` and `make test`. Each installs what is missing
# into .venv first. torch is pinned to 2.13.0, the CPU build (a bare `torch` pulls CUDA).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: run test install lint results bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/serve run serve_config.yaml

test: $(STAMP)
	$(BIN)/ruff check core deployments graphs loadtest paretoserve_cli tests
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check core deployments graphs loadtest paretoserve_cli tests
	$(BIN)/ruff format --check core deployments graphs loadtest paretoserve_cli tests

bench: $(STAMP)
	$(BIN)/paretoserve bench --arms 3 --json docs/bench/k3.json
	$(BIN)/paretoserve bench --arms 16 --json docs/bench/k16.json
	$(BIN)/paretoserve bench --arms 64 --json docs/bench/k64.json

results: $(STAMP)
	$(BIN)/python docs/make_results.py > docs/results/tables.md
