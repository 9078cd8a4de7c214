# The two commands of the README are `make serve` and `make test`; everything else is for developers.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

.PHONY: install serve test lint proto bench
install: $(BIN)/.installed

serve: $(BIN)/.installed
	$(BIN)/wattserve serve

lint: $(BIN)/.installed
	$(BIN)/python proto/generate.py --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

proto: $(BIN)/.installed
	$(BIN)/python proto/generate.py

bench: $(BIN)/.installed
	$(BIN)/python bench/serve_vs_ort.py
