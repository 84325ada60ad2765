"""Fixtures of the documentation's samples: a PostgreSQL server for the pages that ask for one."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ..django.postgres import PostgresServer, postgres_bin_dir


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
