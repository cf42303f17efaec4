# Two commands: `make demo` sets up and runs the demo, `make test` sets up and runs the tests.
# `make demo PORT=8123` serves the demo on another port than 8000.
# After `make setup`, run other commands as `.venv/bin/retention ...` (or `. .venv/bin/activate`).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test check setup lint migrate bench

$(BIN)/retention: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

setup: $(BIN)/retention

# The port the demo serves on, at 127.0.0.1; the demo refuses a busy one before changing var/.
PORT ?= 8000
demo: setup
	$(BIN)/retention demo --port $(PORT)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

# The inner loop: everything but the tests marked slow (under a minute).
check: lint
	$(BIN)/pytest -m "not slow"

# Apply the store's migrations (the jobs also apply pending ones before they run).
migrate: setup
	$(BIN)/retention migrate

# The nightly-run benchmark on a cached synthetic clinic in the local PostgreSQL
# (docs/performance.md); CLIENTS=100000 for the large one.
CLIENTS ?= 10000
bench: setup
	$(BIN)/python benchmarks/nightly.py --clients $(CLIENTS)
