"""Fixtures of the documentation's samples: a PostgreSQL server for the pages that ask for one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..django.postgres import PostgresServer, postgres_bin_dir

DOCS_TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # `make test` runs the documentation's tests in a group of their own choosing (marker docs).
    for item in items:
        if item.path.is_relative_to(DOCS_TESTS):
            item.add_marker(pytest.mark.docs)


@pytest.fixture(scope="session")
def docs_postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL server. Missing PostgreSQL fails in CI, skips locally."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        message = "PostgreSQL is not installed (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = PostgresServer(bin_dir)
    server.start()
    yield server
    server.stop()
