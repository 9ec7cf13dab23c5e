# One entry point for developers and CI. `make install` is idempotent.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: install test lint lock demo bench reliability openapi screenshots clean

install: $(STAMP)

# The versions are the locked ones (requirements-dev.lock, see `lock`): CI and every developer test the
# same dependencies, and a new release upstream changes nothing until `make lock` takes it.
$(STAMP): pyproject.toml requirements-dev.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements-dev.lock -e '.[test]'
	@touch $(STAMP)

# Regenerates both lock files from pyproject.toml (needs PyPI; uv resolves for Linux, macOS and Windows
# at once). requirements-dev.lock pins every extra and is what `make install` takes as constraints, without
# hashes, since pip refuses an editable install next to hashes. requirements.lock is the image's part
# (runtime, Flower, the build backend) at the same versions, with hashes for the Dockerfile's
# --require-hashes. Pins already there are kept; `make lock LOCK_ARGS=--upgrade` takes the newest allowed.
UV_VERSION = 0.13.9
LOCK_FLAGS = --quiet --universal --python-version 3.11 --custom-compile-command "make lock" $(LOCK_ARGS)
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'uv==$(UV_VERSION)'
	$(BIN)/uv pip compile $(LOCK_FLAGS) --extra monitor --extra test -o requirements-dev.lock pyproject.toml
	$(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
		| $(BIN)/uv pip compile $(LOCK_FLAGS) --generate-hashes --extra monitor -c requirements-dev.lock \
		-o requirements.lock pyproject.toml -

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

# The HTTP API's schema, kept in docs/ (tests/test_api_schema.py fails when it is not current).
openapi: install
	$(BIN)/python -m worker.http.schema > docs/openapi.json

# The console's screenshots in docs/img (the README and docs/console.md show them), taken by its browser
# tests in Debian's Chromium (apt-get install chromium) against a real server, worker and SMTP server.
screenshots: install
	MAILWORKER_SCREENSHOTS=docs/img $(BIN)/python -m pytest tests/test_console_browser.py -q

clean:
	rm -rf $(VENV) outbox .pytest_cache .mypy_cache .ruff_cache
