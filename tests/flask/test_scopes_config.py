"""Scopes in the Flask app's CELERY_EVENTS reach its bus; a bad one fails init_app."""

from __future__ import annotations

import pytest
from celery import Celery
from flask import Flask

from celery_events import ConfigurationError, PublishNotAllowed
from celery_events.contrib.flask import CeleryEvents


def test_the_scopes_of_celery_events_reach_the_bus(redis_url: str) -> None:
    extension = CeleryEvents(celery=Celery("scoped-flask", broker=redis_url))
    app = Flask("scoped")
    app.config["CELERY_EVENTS"] = {
        "service": "shop",
        "publish_scopes": {"shop": ["order.*"]},
        "protected_names": ["payments.#"],
    }
    extension.init_app(app)
    bus = extension.bus_for(app)
    try:
        assert bus.scope_policy is not None
        with app.app_context(), pytest.raises(PublishNotAllowed, match="publish_scopes"):
            extension.publish("payments.refunded", {"id": 1})
    finally:
        bus.close()


def test_a_bad_scope_fails_init_app_naming_it(redis_url: str) -> None:
    extension = CeleryEvents(celery=Celery("badly-scoped-flask", broker=redis_url))
    app = Flask("badly")
    app.config["CELERY_EVENTS"] = {"service": "shop", "subscribe_scopes": {"shop": "order.*"}}
    with pytest.raises(ConfigurationError, match=r"subscribe_scopes\['shop'\]"):
        extension.init_app(app)
