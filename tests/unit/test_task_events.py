"""The bus turns on the task events Flower needs, unless the app's configuration decides."""

from __future__ import annotations

import pytest
from celery import Celery

from celery_events import ConfigurationError, EventBus

BROKER = "redis://127.0.0.1:1/0"  # never connected to: creating a bus opens no connection


def events_conf(app: Celery) -> tuple[bool, bool]:
    return app.conf.worker_send_task_events, app.conf.task_send_sent_event


def test_a_bus_turns_on_worker_and_sent_events() -> None:
    app = Celery("svc", broker=BROKER)
    EventBus(app, service="svc")
    assert events_conf(app) == (True, True)


def test_a_bus_on_an_already_configured_app_turns_them_on_too() -> None:
    app = Celery("svc", broker=BROKER)
    assert app.conf.broker_url == BROKER and app.configured
    EventBus(app, service="svc")
    assert events_conf(app) == (True, True)


def test_a_value_set_on_app_conf_is_kept() -> None:
    app = Celery("svc", broker=BROKER)
    app.conf.worker_send_task_events = False
    EventBus(app, service="svc")
    assert events_conf(app) == (False, True)


def test_a_value_from_a_config_object_is_kept_even_with_a_namespace() -> None:
    class Config:
        CELERY_TASK_SEND_SENT_EVENT = False

    app = Celery("svc")
    app.config_from_object(Config, namespace="CELERY")
    EventBus(app, service="svc")
    assert events_conf(app) == (True, False)


def test_a_configuration_loaded_later_is_respected() -> None:
    class Config:
        worker_send_task_events = False

    app = Celery("svc", broker=BROKER)
    EventBus(app, service="svc")
    assert events_conf(app) == (True, True)
    app.config_from_object(Config)
    assert events_conf(app) == (False, True)


def test_the_task_events_setting_turns_it_off() -> None:
    app = Celery("svc", broker=BROKER)
    EventBus(app, service="svc", task_events=False)
    assert events_conf(app) == (False, False)


def test_the_task_events_setting_must_be_true_or_false() -> None:
    with pytest.raises(ConfigurationError, match="task_events must be True or False"):
        EventBus(Celery("svc", broker=BROKER), service="svc", task_events="no")
