"""Scopes in CELERY_EVENTS: passed to the bus as they are, and a bad one is a system check
error naming the value (celery_events.E002), as every bad bus setting is."""

from __future__ import annotations

import pytest
from django.test import override_settings

from celery_events.contrib.django.checks import check_settings
from celery_events.contrib.django.conf import read_config
from celery_events.settings import Settings
from celery_events.trust.scopes import policy_for

GOOD = {"service": "warehouse", "app": "tests.django.proj.celery.app"}
SCOPES = {
    "publish_scopes": {"payments": ["payments.#"]},
    "subscribe_scopes": {"warehouse": ["order.#"]},
    "protected_names": ["payments.#"],
}


def test_scopes_pass_the_checks_and_reach_the_bus_settings() -> None:
    with override_settings(CELERY_EVENTS={**GOOD, **SCOPES}):
        assert check_settings() == []
        policy = policy_for(Settings.from_options(dict(read_config().bus_settings)))
    assert policy is not None
    assert policy.may_subscribe("warehouse", "order.created")
    assert not policy.may_publish("warehouse", "payments.refunded")


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"publish_scopes": {"payments": "payments.#"}}, "publish_scopes['payments']"),
        ({"subscribe_scopes": {"warehouse": ["order..#"]}}, "'order..#'"),
        ({"protected_names": ["Payments"]}, "'Payments'"),
    ],
)
def test_a_bad_scope_is_a_check_error_naming_it(overrides: dict[str, object], named: str) -> None:
    with override_settings(CELERY_EVENTS={**GOOD, **overrides}):
        [message] = check_settings()
    assert message.id == "celery_events.E002"
    assert named in message.msg
