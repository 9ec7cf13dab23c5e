# One entry point for developers and CI. `make install` is idempotent.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: install test lint demo bench reliability clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

# The whole suite but the slow fault scenarios; starts its own redis-server when none answers.
test: install
	$(BIN)/python -m pytest -m "not reliability" -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check config worker tasks templates
	$(BIN)/mypy
	$(BIN)/lint-imports

demo: install
	$(BIN)/python -m worker.demo

# Throughput, latency, Test Connection and memory against baselines, in one run (README: Performance).
# Options through BENCH_ARGS, e.g. `make bench BENCH_ARGS=--quick`.
bench: install
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Every fault scenario, the hostile-input and secrets runs included, with their figures (-s); the fuzz
# suite (tests/test_fuzz.py) with its large hypothesis profile.
reliability: install
	HYPOTHESIS_PROFILE=reliability $(BIN)/python -m pytest tests/reliability tests/test_hostile_input.py tests/test_secrets_scan.py tests/test_breaker.py tests/test_fuzz.py -q -s

clean:
	rm -rf $(VENV) outbox .pytest_cache .mypy_cache .ruff_cache
