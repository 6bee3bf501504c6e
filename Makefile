# Set-up and checks. `make quickstart` and `make test` each create .venv first when needed.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
# A CPU build of torch; pip takes it from this machine's disk (a bare `torch` pulls CUDA, GBs).
TORCH ?= torch==2.13.0

.PHONY: setup quickstart test lint clean

$(BIN)/guardtune: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: $(BIN)/guardtune

quickstart: setup
	$(BIN)/guardtune quickstart

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) guardtune-quickstart .pytest_cache .mypy_cache .ruff_cache
