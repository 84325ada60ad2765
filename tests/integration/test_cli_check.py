"""`celery -A <service> eventbus check`, for CI: the app's contracts against the registry (a
real redis-server) or a committed contracts file, as the real command."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from .test_cli import eventbus

DECLARED = "tests.services.declared"
#: The subscriber side: a billing service whose handler takes order.created.
BILLING = {"DECLARED_SERVICE": "billing", "DECLARED_SCHEMAS": "", "DECLARED_SUBSCRIBES": "order.created"}


def register(env: dict[str, str] | None = None) -> None:
    done = eventbus("register", app=DECLARED, env=env)
    assert done.returncode == 0, done.stderr


def test_check_passes_when_nothing_breaks(redis_url: str) -> None:
    # Given order.created v1 registered
    register()

    # When the app's code adds an optional field and CI runs the check
    done = eventbus("check", app=DECLARED, env={"DECLARED_SCHEMAS": "1:v1-noted"})

    # Then it exits 0 and says what it checked against
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == (
        f"No breaking changes: 1 declaration(s) and 1 subscription(s) checked against the"
        f" registry at {redis_url}."
    )


def test_check_lists_a_breaking_schema_per_name_and_version(
    redis_url: str, redis_client: redis.Redis
) -> None:
    register()
    before = redis_client.get("celery_events:registry:declared")

    # When the app's code narrows v1's total to an integer
    env = {"DECLARED_SCHEMAS": "1:v1-narrowed"}
    done = eventbus("check", app=DECLARED, env=env)
    as_json = eventbus("check", "--json", app=DECLARED, env=env)

    # Then it exits 1 listing the change under its name and version, and records nothing
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "order.created v1:"
    assert "the schema breaks the one registered (by declared) under BACKWARD" in lines[1]
    assert any(line.strip().startswith("- total:") for line in lines)
    assert "Declare it as version 2, or a new name, or compatibility='NONE'." in done.stdout
    assert "1 breaking change(s) in service 'declared'" in done.stderr
    assert redis_client.get("celery_events:registry:declared") == before
    # And --json gives the same as data
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["checked"] == 1 and report["service"] == "declared"
    (item,) = report["breaking"]
    assert (item["name"], item["version"], item["kind"]) == ("order.created", 1, "schema")
    assert {c["path"] for c in item["changes"]} == {"total"}


def test_check_reports_a_removed_version_a_subscriber_still_needs(redis_url: str) -> None:
    # Given the publisher registered v1 and v2, and billing accepts only v1
    register({"DECLARED_SCHEMAS": "1:v1,2:v2"})
    register({**BILLING, "DECLARED_VERSIONS": "1"})

    # When the publisher's code drops v1
    done = eventbus("check", app=DECLARED, env={"DECLARED_SCHEMAS": "2:v2"})

    # Then the check names the subscriber left without events
    assert done.returncode == 1, done.stdout + done.stderr
    assert "order.created v1 is no longer declared, and billing.handle accepts only v1" in (
        done.stdout
    )


def test_check_reports_a_handler_that_cannot_read_the_publishers_schema(
    redis_url: str,
) -> None:
    # Given the publisher registered v1, whose total is any number
    register()

    # When billing's handler accepts only an integer total
    done = eventbus("check", app=DECLARED, env={**BILLING, "DECLARED_ACCEPTS": "v1-narrowed"})

    # Then the check says billing cannot read what the publisher sends
    assert done.returncode == 1, done.stdout + done.stderr
    assert "billing.handle cannot read what declared publishes" in done.stdout
    assert "total" in done.stdout


def test_a_written_contracts_file_is_stable_and_checked_against(
    redis_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "contracts.json"

    # When the publisher and the subscriber write their contracts into one file, twice
    texts = []
    for _ in range(2):
        assert eventbus("check", "--write", str(path), app=DECLARED).returncode == 0
        written = eventbus("check", "--write", str(path), app=DECLARED, env=BILLING)
        assert written.returncode == 0, written.stderr
        texts.append(path.read_bytes())
    assert "Wrote 0 declaration(s) and 1 subscription(s) of service 'billing'" in written.stdout

    # Then the second run gave the same bytes, holding both services
    assert texts[0] == texts[1]
    assert sorted(json.loads(texts[0])["services"]) == ["billing", "declared"]
    # And checks against it pass, or fail for a breaking change, without any registry
    no_registry = {"CELERY_EVENTS_TEST_BROKER": "redis://127.0.0.1:1/0"}
    fine = eventbus("check", "--against", str(path), app=DECLARED, env=no_registry)
    assert fine.returncode == 0, fine.stdout + fine.stderr
    assert fine.stdout.strip() == (
        f"No breaking changes: 1 declaration(s) and 1 subscription(s) checked against {path}."
    )
    broken = eventbus(
        "check", "--against", str(path), app=DECLARED,
        env={**no_registry, "DECLARED_SCHEMAS": "1:v1-narrowed"},
    )
    assert broken.returncode == 1 and "order.created v1:" in broken.stdout


def test_a_missing_or_unreadable_contracts_file_is_bad_usage(tmp_path: Path) -> None:
    env = {"CELERY_EVENTS_TEST_BROKER": "redis://127.0.0.1:1/0"}
    missing = eventbus("check", "--against", str(tmp_path / "nope.json"), app=DECLARED, env=env)
    (tmp_path / "bad.json").write_text("{")
    bad = eventbus("check", "--against", str(tmp_path / "bad.json"), app=DECLARED, env=env)

    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert "--write FILE" in missing.stderr
    assert bad.returncode == 2 and "is not JSON" in bad.stderr


def test_check_and_write_updates_the_file_only_when_nothing_breaks(tmp_path: Path) -> None:
    path = tmp_path / "contracts.json"
    env = {"CELERY_EVENTS_TEST_BROKER": "redis://127.0.0.1:1/0"}
    assert eventbus("check", "--write", str(path), app=DECLARED, env=env).returncode == 0
    before = path.read_bytes()

    # When a breaking change is checked against the file and written to it
    args = ("check", "--against", str(path), "--write", str(path))
    broken = eventbus(*args, app=DECLARED, env={**env, "DECLARED_SCHEMAS": "1:v1-narrowed"})
    # Then nothing is written, and the command says so
    assert broken.returncode == 1 and path.read_bytes() == before
    assert f"{path} left as it was" in broken.stderr

    # And a compatible one is written, the old schema kept as its history
    fine = eventbus(*args, app=DECLARED, env={**env, "DECLARED_SCHEMAS": "1:v1-noted"})
    assert fine.returncode == 0, fine.stdout + fine.stderr
    assert f"Wrote 1 declaration(s) and 1 subscription(s) of service 'declared' to {path}." in fine.stdout
    (declared,) = json.loads(path.read_text())["services"]["declared"]["declarations"]
    assert declared["schema"]["properties"]["note"] == {"type": "string"}
    assert declared["history"][0]["properties"]["total"] == {"type": "number"}
