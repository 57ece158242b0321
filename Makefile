# curvlab: `make help` lists the targets. Every target creates or reuses .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SCALE  ?= ci
FORCE  ?= 0
LAUNCHER ?=
LAUNCHER_SET ?=
# The launcher options of `make reproduce-*`: LAUNCHER=joblib LAUNCHER_SET='n_jobs=2' (Hydra launchers, configs/hydra/launcher/)
REPRO_LAUNCH = $(if $(LAUNCHER),--launcher $(LAUNCHER),) $(foreach kv,$(LAUNCHER_SET),--launcher-set $(kv))

.DEFAULT_GOAL := help
.PHONY: help venv demo test test-slow test-gpu bench reproduce-tables reproduce-figures clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-20s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP) ## Create or reuse .venv and install curvlab with its dev extras

demo: $(STAMP) ## Train the default demo (digits, no download, < 1 min on 2 CPU cores)
	$(BIN)/curvlab train

test: $(STAMP) ## Run the default test suite (no slow tests)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP) ## Run only the slow tests
	$(BIN)/python -m pytest -q -m slow

test-gpu: $(STAMP) ## Run the CUDA tests, a short GPU benchmark and a short cuda training run (each skips without CUDA)
	PYTHON=$(BIN)/python sh scripts/test_gpu.sh

bench: $(STAMP) ## Run every benchmark script in scripts/ and print its figures
	@set -e; for f in scripts/bench_*.py; do echo "=== $$f"; $(BIN)/python $$f; done

reproduce-tables: $(STAMP) ## Run the table experiments (SCALE=ci|cpu|full, FORCE=1, LAUNCHER=joblib|submitit_local|submitit_slurm[_cpu|_gpu]|ray, LAUNCHER_SET='n_jobs=2'): runs in results/runs/, renders in results/tables/ (SCALE=ci: runs/reproduce/ci/)
	$(BIN)/python scripts/reproduce.py tables --scale $(SCALE) $(if $(filter 1,$(FORCE)),--force,) $(REPRO_LAUNCH)

reproduce-figures: $(STAMP) ## Run the figure experiments (SCALE=ci|cpu|full; FORCE, LAUNCHER, LAUNCHER_SET as reproduce-tables): runs in results/runs/, renders in results/figures/ (SCALE=ci: runs/reproduce/ci/)
	$(BIN)/python scripts/reproduce.py figures --scale $(SCALE) $(if $(filter 1,$(FORCE)),--force,) $(REPRO_LAUNCH)

clean: ## Remove caches and scratch run folders (keeps .venv and results/)
	rm -rf .pytest_cache outputs multirun runs
