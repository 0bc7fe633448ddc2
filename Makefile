# The two commands README names: `make run` and `make test`. Both create .venv
# when it is missing and install the tested versions (constraints.txt) into it.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# A GPU or CPU-only wheel index for torch, e.g. PyTorch's cu128 index (see README).
TORCH_INDEX ?=

# Quiet offline: no telemetry, no update checks, nothing written to ~.
export DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export ORT_DISABLE_TELEMETRY := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_HOME ?= $(CURDIR)/.prefect
# dvc.yaml's stage commands run `python`: the one in .venv.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: run test test-fast test-multihost lint format lock clean-venv screenshots

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install only when the declared dependencies change. --no-compile: pip would compile
# all 40,000 .py files of the environment (about 90 of the install's 140 s); Python
# compiles, and caches, only the modules that are imported, on first use.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install --quiet --no-compile torch==2.13.0 --index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet --no-compile -c constraints.txt -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/dvc repro
	$(BIN)/driftline summary

# pytest-xdist: whole files per worker (their fixtures build once), one thread each, in
# collection order (tests/conftest.py puts the longest files first), not by test count.
# One worker more than the 2 cores of the machine this was measured on: the loops spend
# part of their time waiting on servers and polls, and the third worker fills it.
TEST_WORKERS ?= 3
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: $(VENV)/.installed
	$(PYTEST)

# The edit loop: unit, data and serving tests.
test-fast: $(VENV)/.installed
	$(PYTEST) tests/unit tests/data tests/serving

# The loop across three hosts alone (README, "Production"): as root, it makes network
# namespaces; otherwise the hosts are separate folders on 127.0.0.1.
test-multihost: $(VENV)/.installed
	$(BIN)/python -m pytest -m multihost tests/multihost

# README's pictures of the Prefect and Evidently UIs, into docs/: after `driftline up` and
# `driftline simulate` here, with Debian's chromium (`apt-get install -y chromium`).
screenshots: $(VENV)/.installed
	$(BIN)/python scripts/screenshots.py

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Re-resolve the tested set after changing pyproject.toml's dependencies.
lock: $(VENV)/.installed
	$(BIN)/python -m pip freeze --exclude-editable \
	  | sed -E 's/^(torch==[0-9.]+)\+cpu$$/\1/' > constraints.new
	{ sed -n '1,3p' constraints.txt; cat constraints.new; } > constraints.txt && rm constraints.new

clean-venv:
	rm -rf $(VENV)
