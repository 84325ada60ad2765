"""The users table, in SQLite: one file in the data directory, shared by web and worker."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DATA_DIR = Path(os.environ.get("DEMO_DATA_DIR", Path(__file__).resolve().parent.parent / "var"))
DB_PATH = DATA_DIR / "users.sqlite3"

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    welcome_order_id INTEGER
)
"""


def connect() -> sqlite3.Connection:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(DB_PATH, timeout=10)
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(SCHEMA)
    return connection


@contextmanager
def transaction() -> Iterator[sqlite3.Connection]:
    """A connection whose changes are committed on success and rolled back on error."""
    connection = connect()
    try:
        with connection:
            yield connection
    finally:
        connection.close()


def as_dict(row: sqlite3.Row) -> dict[str, Any]:
    return {key: row[key] for key in row.keys()}
