"""The project's bus puts Django's transactions on its middleware chain, after the user's."""

from __future__ import annotations

import pytest
import redis
from django.db import transaction
from django.test import override_settings

from celery_events.contrib.django.checks import check_settings, load_middleware
from celery_events.contrib.django.middleware import DjangoTransactions

from .helpers import queued_envelopes
from .stamps import Stamp, stamp

QUEUE = "events.warehouse"
GOOD = {"service": "warehouse", "app": "tests.django.proj.celery.app"}


def test_the_project_bus_ends_its_chain_with_djangos_transactions(bus) -> None:
    *_, last = bus.middleware
    assert isinstance(last, DjangoTransactions)
    assert bus.middleware.transactional and bus.middleware.publish_scope is not None


@pytest.mark.django_db(transaction=True)
def test_a_prebuilt_event_published_in_a_transaction_is_sent_after_the_commit(
    bus, redis_client: redis.Redis
) -> None:
    event = bus.new_event("order.placed", {"order_id": 3})
    with transaction.atomic():
        result = bus.publish_event(event)
        assert result.deferred and result.event is event
        assert redis_client.llen(QUEUE) == 0
    envelopes = queued_envelopes(redis_client, QUEUE)
    assert [e["id"] for e in envelopes] == [event.id, event.id]


def test_middleware_is_named_by_import_path_as_a_class_or_an_instance() -> None:
    assert isinstance(load_middleware("tests.django.stamps.Stamp"), Stamp)
    assert load_middleware("tests.django.stamps.stamp") is stamp
    with override_settings(
        CELERY_EVENTS={**GOOD, "middleware": ["tests.django.stamps.Stamp"]}
    ):
        assert check_settings() == []


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("tests.django.stamps.Nowhere", "cannot be imported"),
        ("tests.django.stamps.not_middleware", "not a celery_events.Middleware"),
        ("tests.django.stamps.NeedsArguments", "cannot be made without arguments"),
    ],
)
def test_middleware_that_cannot_be_loaded_is_a_check_error(path: str, says: str) -> None:
    with override_settings(CELERY_EVENTS={**GOOD, "middleware": [path]}):
        [message] = check_settings()
    assert message.id == "celery_events.E005" and path in message.msg and says in message.msg


def test_middleware_that_is_not_a_list_of_paths_is_a_bad_key() -> None:
    with override_settings(CELERY_EVENTS={**GOOD, "middleware": "tests.django.stamps.Stamp"}):
        [message] = check_settings()
    assert message.id == "celery_events.E002" and "list of import paths" in message.msg
