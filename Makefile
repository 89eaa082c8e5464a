# Two commands for a newcomer (see README):  make demo   and   make test
# Both create .venv on first use and install everything the project needs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: an exact pin takes the local CPU wheel where one is provided; elsewhere PyPI's.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0 || $(BIN)/python -m pip install -q torch
	$(BIN)/python -m pip install -q -e ".[test,plots]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/logit-swarm demo

test: $(STAMP)
	$(BIN)/ruff check logit_swarm tests experiments
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python experiments/bench_engine.py

clean:
	rm -rf $(VENV) .pytest_cache
