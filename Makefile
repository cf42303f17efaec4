# Two commands: `make demo` sets up and runs the demo, `make test` sets up and runs the tests.
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

demo: setup
	$(BIN)/retention demo

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
