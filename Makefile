# Every target creates .venv and installs on first use, so on a fresh machine one command is enough.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench chaos clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/sync-worker dev

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check sync_worker tests bench
	$(BIN)/ruff format --check sync_worker tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format sync_worker tests bench
	$(BIN)/ruff check --fix sync_worker tests bench

bench: $(STAMP)
	$(BIN)/python -m bench

chaos: $(STAMP)
	CHAOS_FULL=1 $(BIN)/pytest -m slow tests/chaos

clean:
	rm -rf $(VENV) .dev .pytest_cache .mypy_cache .ruff_cache
