"""A Flask service built the way Flask's docs build one: an app factory and Celery in it."""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import Celery, Task
from flask import Flask, current_app, request

from celery_events import Event
from celery_events.contrib.flask import CeleryEvents

from ..services._effects import EFFECTS_KEY

events = CeleryEvents()


@events.subscribe("order.placed")
def remember_order(event: Event) -> None:
    # current_app only works inside an application context: the extension provides it.
    client = redis.Redis.from_url(current_app.config["CELERY"]["broker_url"])
    client.rpush(
        EFFECTS_KEY,
        json.dumps(
            {
                "handler": "flaskshop.remember_order",
                "event_id": event.id,
                "app": current_app.name,
                "shop_name": current_app.config["SHOP_NAME"],
            }
        ),
    )


def celery_init_app(app: Flask) -> Celery:
    """Flask's documented Celery set-up (flask.palletsprojects.com, "Background Tasks")."""

    class FlaskTask(Task):  # type: ignore[misc]
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name)
    celery_app.config_from_object(app.config["CELERY"])
    app.extensions["celery"] = celery_app
    return celery_app


def create_app(**config: Any) -> Flask:
    app = Flask("flaskshop")
    app.config.update(
        CELERY={"broker_url": os.environ["CELERY_EVENTS_TEST_BROKER"]},
        CELERY_EVENTS={"service": "flaskshop", "publish_timeout": 2.0},
        SHOP_NAME="main street",
    )
    app.config.update(config)
    celery_init_app(app)
    events.init_app(app)

    @app.post("/orders")
    def place_order() -> dict[str, Any]:
        body = request.get_json()
        result = events.publish("order.placed", {"order_id": body["order_id"]})
        return {"event_id": result.event.id, "deliveries": len(result.deliveries)}

    return app
