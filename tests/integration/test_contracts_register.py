"""Declarations are recorded at worker start and by `celery eventbus register`, and a schema
that breaks the registered one of its version is refused there: real redis-server, real
`celery worker` processes (tests/services/declared.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis

from celery_events.registry import RegisteredDeclaration

from ..harness import Worker
from ..services._contracts import SCHEMAS
from .test_cli import eventbus
from .test_worker_refuses import refused

DECLARED = "tests.services.declared"


def declarations(client: redis.Redis, service: str = "declared") -> list[dict[str, Any]]:
    record = json.loads(client.get(f"celery_events:registry:{service}") or b"{}")
    return list(record.get("declarations", []))


def test_a_worker_records_its_declarations_and_keeps_their_history(
    start_worker: Callable[..., Worker], redis_client: redis.Redis
) -> None:
    # Given a worker that declares order.created v1
    first = start_worker(DECLARED)
    (declared,) = declarations(redis_client)
    assert (declared["name"], declared["version"], declared["schema"]) == (
        "order.created", 1, SCHEMAS["v1"]
    )
    first.stop()

    # When the next deploy's worker adds an optional field to v1
    start_worker(DECLARED, env={"DECLARED_SCHEMAS": "1:v1-noted"})

    # Then the registry holds the new schema, with the old one as its history
    (declared,) = declarations(redis_client)
    assert declared["schema"] == SCHEMAS["v1-noted"]
    assert declared["history"] == [SCHEMAS["v1"]]


def test_a_worker_whose_schema_breaks_the_registered_one_does_not_start(
    start_worker: Callable[..., Worker], redis_client: redis.Redis
) -> None:
    # Given order.created v1 registered by the running fleet
    start_worker(DECLARED).stop()
    before = redis_client.get("celery_events:registry:declared")

    # When a worker starts whose v1 narrows total to an integer
    worker = start_worker(DECLARED, env={"DECLARED_SCHEMAS": "1:v1-narrowed"}, ready=False)

    # Then it exits with status 1 and one log line holding the diff and what to do
    log = refused(worker)
    assert "order.created v1:" in log
    assert "total" in log
    assert "under BACKWARD" in log
    assert "Declare it as version 2, or a new name, or compatibility='NONE'." in log
    # And nothing was recorded
    assert redis_client.get("celery_events:registry:declared") == before


def test_a_breaking_change_as_a_new_version_starts(
    start_worker: Callable[..., Worker], redis_client: redis.Redis
) -> None:
    start_worker(DECLARED).stop()

    start_worker(DECLARED, env={"DECLARED_SCHEMAS": "1:v1,2:v2"})

    assert [(d["version"], d["schema"]) for d in declarations(redis_client)] == [
        (1, SCHEMAS["v1"]), (2, SCHEMAS["v2"])
    ]


def test_register_records_a_publishers_declarations_and_refuses_a_breaking_one(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # Given a publisher-only process registered at deploy time
    done = eventbus("register", app=DECLARED)
    assert done.returncode == 0, done.stderr
    assert "Recorded 1 declaration(s) of service 'declared'." in done.stdout
    assert "order.created" in done.stdout

    # When the next deploy narrows v1
    refused_ = eventbus("register", app=DECLARED, env={"DECLARED_SCHEMAS": "1:v1-narrowed"})

    # Then the command exits non-zero printing the diff, and the registry is unchanged
    assert refused_.returncode == 2, refused_.stdout
    assert "order.created v1:" in refused_.stderr
    assert "total" in refused_.stderr
    assert "Declare it as version 2" in refused_.stderr
    (declared,) = declarations(redis_client)
    assert declared["schema"] == SCHEMAS["v1"]


def test_declarations_read_back_as_registered_declarations(
    redis_url: str, publisher: Any
) -> None:
    done = eventbus("register", app=DECLARED, env={"DECLARED_SCHEMAS": "1:v1,2:v2"})
    assert done.returncode == 0, done.stderr

    found = publisher.registry.declarations()

    assert [(d.service, d.name, d.version) for d in found] == [
        ("declared", "order.created", 1), ("declared", "order.created", 2)
    ]
    assert all(isinstance(d, RegisteredDeclaration) for d in found)
    assert found[1].dataschema == "urn:celery-events:schema:order.created:2"
