# Every target creates .venv and installs on first use, so on a fresh machine one command is enough.
# `make run` installs only what running needs; test, lint, bench and chaos add the dev extra.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
# Tests mostly wait on real processes (Redis, workers, the sandbox), so more pytest workers than
# cores pays: each xdist worker starts its own redis-server on a free port.
TEST_WORKERS ?= 4

.PHONY: run test lint format bench chaos clean

$(VENV):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(RUN_STAMP): pyproject.toml | $(VENV)
	$(BIN)/pip install -q -e '.[run]'
	touch $(RUN_STAMP)

$(DEV_STAMP): pyproject.toml | $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(DEV_STAMP) $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/sync-worker dev

test: $(DEV_STAMP)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal

lint: $(DEV_STAMP)
	$(BIN)/ruff check sync_worker tests bench
	$(BIN)/ruff format --check sync_worker tests bench
	$(BIN)/mypy

format: $(DEV_STAMP)
	$(BIN)/ruff format sync_worker tests bench
	$(BIN)/ruff check --fix sync_worker tests bench

bench: $(DEV_STAMP)
	$(BIN)/python -m bench

chaos: $(DEV_STAMP)
	CHAOS_FULL=1 $(BIN)/pytest -m slow tests/chaos tests/ha tests/pipeline/test_faults.py::test_worker_rides_out_redis_crashes

clean:
	rm -rf $(VENV) .dev .pytest_cache .mypy_cache .ruff_cache
