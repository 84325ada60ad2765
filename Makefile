# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extra arguments for the demo, e.g. `make demo DEMO_ARGS=--once`.
DEMO_ARGS ?=
# MkDocs 1.6 prints a banner about its successor at every build; the site builds the same.
export NO_MKDOCS_2_WARNING = 1

.PHONY: demo test test-serial test-unit lint docs docs-serve clean

$(BIN)/.installed: setup.cfg pyproject.toml
	@# Debian's python3 creates virtualenvs only with python3-venv; install it when we can.
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; } \
		|| { echo "$(PYTHON) cannot create a virtualenv: install python3-venv" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

## The example project: Redis, three services, their workers and Flower, a scenario; Ctrl-C stops it.
demo: $(BIN)/.installed
	$(BIN)/python example_project/run_demo.py $(DEMO_ARGS)

# The groups `make test` runs at once, each a pytest process with its own servers: NAME='marker
# expression' (tests/conftest.py marks the tests that need RabbitMQ, Sentinel or PostgreSQL).
# The documentation's samples (marker `docs`) join the shorter group.
TEST_GROUPS ?= redis='not rabbitmq and not sentinel and not postgres and not docs' \
	rabbitmq-sentinel-postgres-docs='rabbitmq or sentinel or postgres or docs'
# Extra pytest arguments for every group, e.g. `make test PYTEST_ARGS='-x --durations=20'`.
PYTEST_ARGS ?=

## Every test: unit tests, then integration tests against real servers (redis-server, RabbitMQ
## nodes, Sentinel, PostgreSQL) and real workers, as parallel groups (scripts/test-groups).
test: $(BIN)/.installed
	scripts/system-packages
	$(BIN)/python scripts/test-groups $(TEST_GROUPS) -- $(PYTEST_ARGS)

## Every test in one pytest process, one after the other.
test-serial: $(BIN)/.installed
	scripts/system-packages
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Unit tests only (no server needed).
test-unit: $(BIN)/.installed
	$(BIN)/python -m pytest tests/unit

## Ruff, mypy, and the package's shape: no broker driver outside celery_events/backends/, no
## import cycle (scripts/check-architecture).
lint: $(BIN)/.installed
	$(BIN)/ruff check celery_events tests example_project benchmarks scripts/check-architecture \
		scripts/test-groups docs/_hooks
	$(BIN)/mypy --strict celery_events
	$(BIN)/python scripts/check-architecture celery_events

## The documentation site (mkdocs.yml, docs/): built into site/ strictly, so a broken link,
## reference or docstring fails; the catalog graph is drawn at build time (needs Graphviz).
docs: $(BIN)/.installed
	scripts/system-packages
	$(BIN)/mkdocs build --strict

## The site served on http://127.0.0.1:8000, rebuilt as docs/ or the docstrings change.
docs-serve: $(BIN)/.installed
	scripts/system-packages
	$(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:8000 --watch celery_events

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .test-results site
