"""The Flask extension with the test client, a real Redis and a real worker."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis
from celery import Celery
from flask import Flask

from celery_events import ConfigurationError
from celery_events.contrib.flask import CeleryEvents

from ..django.helpers import queued_counts
from ..harness import Worker, wait_until
from ..integration.conftest import effects
from .shop import create_app, events

QUEUE = "events.flaskshop"


@pytest.fixture
def make_app(redis_url: str) -> Iterator[Callable[..., Flask]]:
    made: list[Flask] = []

    def make(**config: object) -> Flask:
        app = create_app(**config)
        made.append(app)
        return app

    yield make
    for app in made:
        events.bus_for(app).close()


def test_a_view_publishes_through_the_bus_of_the_app_it_runs_in(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    # Given two apps from the factory, each with its own Celery app and bus
    first, second = make_app(), make_app()
    assert events.bus_for(first) is not events.bus_for(second)
    events.bus_for(first).register()
    # When a request publishes
    response = first.test_client().post("/orders", json={"order_id": 7})
    # Then the event went to the subscribing service's queue
    assert response.status_code == 200
    assert response.json["deliveries"] == 1
    assert queued_counts(redis_client, QUEUE) == {response.json["event_id"]: 1}
    # And the second app publishes too, through its own bus
    events.bus_for(second).registry.refresh()
    again = second.test_client().post("/orders", json={"order_id": 8}).json
    assert queued_counts(redis_client, QUEUE)[again["event_id"]] == 1


def test_handlers_run_inside_the_flask_app_context_in_the_worker(
    start_worker: Callable[..., Worker], make_app: Callable[..., Flask],
    redis_client: redis.Redis,
) -> None:
    start_worker("tests.flask.worker")
    web = make_app()
    event_id = web.test_client().post("/orders", json={"order_id": 9}).json["event_id"]
    wait_until(lambda: effects(redis_client))
    assert effects(redis_client) == [
        {
            "handler": "flaskshop.remember_order",
            "event_id": event_id,
            "app": "flaskshop",
            "shop_name": "worker street",
        }
    ]


def test_a_second_registration_on_one_app_is_refused(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    with pytest.raises(ConfigurationError, match="already registered on the Flask app"):
        events.init_app(app)


def test_configuration_errors_name_the_key_and_the_fix(redis_url: str) -> None:
    extension = CeleryEvents(celery=Celery("conf-tests", broker=redis_url))
    app = Flask("conf")
    with pytest.raises(ConfigurationError, match=r"app.config\['CELERY_EVENTS'\] = "):
        extension.init_app(app)
    app.config["CELERY_EVENTS"] = {"service": "conf", "publish_timeut": 1}
    with pytest.raises(ConfigurationError, match="Did you mean 'publish_timeout'"):
        extension.init_app(app)
    bare = Flask("bare")
    bare.config["CELERY_EVENTS"] = {"service": "bare"}
    with pytest.raises(ConfigurationError, match=r"app.extensions\['celery'\]"):
        CeleryEvents().init_app(bare)


def test_publish_outside_an_app_context_says_how_to_get_the_bus(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()
    with pytest.raises(ConfigurationError, match="application context"):
        events.publish("order.placed", {"order_id": 1})
    with app.app_context():
        assert events.bus is events.bus_for(app)
    with pytest.raises(ConfigurationError, match="init_app"):
        events.bus_for(Flask("other"))


def test_handlers_can_still_be_called_directly(make_app: Callable[..., Flask]) -> None:
    from .shop import remember_order

    assert remember_order.__name__ == "remember_order"
    assert [h.task_name for h in events.bus_for(make_app()).handlers] == [
        "flaskshop.remember_order"
    ]


def test_the_users_middleware_comes_before_the_app_context_and_handlers_see_the_app(
    make_app: Callable[..., Flask],
) -> None:
    from flask import current_app

    from celery_events import Event, HandlerCall, Middleware
    from celery_events.contrib.flask import AppContext
    from celery_events.middleware import HandleNext
    from celery_events.testing import HandlerRunner

    seen: list[str] = []

    class Outer(Middleware):
        def handle(self, call: HandlerCall, call_next: HandleNext) -> object:
            seen.append("outer")
            return call_next(call)

    outer = Outer()
    app = make_app(CELERY_EVENTS={"service": "flaskshop", "middleware": [outer]})
    bus = events.bus_for(app)
    # After the contracts check every subscribing bus has outermost (celery_events.contracts).
    assert [type(m) for m in bus.middleware][1:] == [Outer, AppContext]
    assert list(bus.middleware)[1] is outer

    @bus.subscribe("shop.checked", name="check_context")
    def check_context(event: Event) -> None:
        seen.append(current_app.config["SHOP_NAME"])

    [run] = HandlerRunner().run(bus, Event.create("shop.checked", {}, source="flaskshop"))
    assert run.status == "succeeded" and seen == ["outer", "main street"]
