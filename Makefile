# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test test-unit lint clean

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

## Every test: unit tests, then integration tests against a real redis-server and real workers.
test: $(BIN)/.installed
	$(BIN)/python -m pytest

## Unit tests only (no server needed).
test-unit: $(BIN)/.installed
	$(BIN)/python -m pytest tests/unit

lint: $(BIN)/.installed
	$(BIN)/ruff check celery_events tests benchmarks
	$(BIN)/mypy --strict celery_events

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache
