"""CELERY_EVENTS is read lazily and checked by Django's system checks."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from celery_events import ConfigurationError
from celery_events.contrib.django.checks import check_settings
from celery_events.contrib.django.conf import read_config

GOOD = {"service": "warehouse", "app": "tests.django.proj.celery.app"}


def ids_and_messages(**overrides: object) -> list[tuple[str, str]]:
    with override_settings(CELERY_EVENTS={**GOOD, **overrides}):
        return [(m.id, m.msg) for m in check_settings()]


def test_the_test_project_settings_pass_every_check() -> None:
    assert check_settings() == []


def test_a_missing_setting_is_an_error_that_shows_what_to_write(settings) -> None:
    del settings.CELERY_EVENTS
    [message] = check_settings()
    assert message.id == "celery_events.E001"
    assert "CELERY_EVENTS is missing" in message.msg and "'service'" in message.msg


@pytest.mark.parametrize(
    ("overrides", "key", "fix"),
    [
        ({"outbx": True}, "'outbx'", "Did you mean 'outbox'?"),
        ({"publish_timeout": -1}, "publish_timeout", "positive number of seconds"),
        ({"service": "Orders!"}, "service", "lowercase word"),
        ({"relay_batch_size": 0}, "relay_batch_size", "positive whole number"),
        ({"outbox": "yes"}, "outbox", "True or False"),
        ({"registry_url": "http://x"}, "registry_url", "redis://"),
    ],
)
def test_a_bad_key_is_an_error_naming_the_key_and_the_fix(
    overrides: dict[str, object], key: str, fix: str
) -> None:
    [(check_id, message)] = ids_and_messages(**overrides)
    assert check_id == "celery_events.E002"
    assert key in message and fix in message


def test_an_app_that_is_not_a_celery_app_is_an_error() -> None:
    [(check_id, message)] = ids_and_messages(app="tests.django.settings.SECRET_KEY")
    assert check_id == "celery_events.E003" and "not a Celery app" in message
    [(check_id, message)] = ids_and_messages(app="tests.django.nowhere.app")
    assert check_id == "celery_events.E003" and "cannot be imported" in message


def test_an_unknown_database_alias_is_an_error() -> None:
    [(check_id, message)] = ids_and_messages(database="replica")
    assert check_id == "celery_events.E004" and "'replica'" in message


def test_an_outbox_in_sqlite_warns_that_only_one_relay_may_run() -> None:
    [(check_id, message)] = ids_and_messages(outbox=True)
    assert check_id == "celery_events.W001" and "SKIP LOCKED" in message
    assert ids_and_messages(outbox=True, database="pg") == []


def test_manage_py_check_fails_on_a_bad_setting() -> None:
    with override_settings(CELERY_EVENTS={**GOOD, "max_event_size": "big"}):
        with pytest.raises(SystemCheckError, match="max_event_size"):
            call_command("check")


def test_settings_are_read_when_used_so_override_settings_works() -> None:
    assert read_config().outbox is False
    with override_settings(CELERY_EVENTS={**GOOD, "outbox": True, "database": "pg"}):
        assert read_config().outbox is True and read_config().database == "pg"
    assert read_config().database == "default"
    with override_settings(CELERY_EVENTS={**GOOD, "relay_interval": 0}):
        with pytest.raises(ConfigurationError, match="relay_interval"):
            read_config()


@pytest.mark.django_db(databases=["default", "pg"])
def test_the_migrations_match_the_models() -> None:
    call_command("makemigrations", "celery_events", "--check", "--dry-run", verbosity=0)
