"""A subscriber whose bus is configured from the environment, for the start-up checks.

- ``CHECKED_BROKER``: the broker URL (default: the test Redis);
- ``CHECKED_BROKER_USE_SSL``: the app's ``broker_use_ssl``, as JSON;
- ``CHECKED_REGISTRY_URL``: the bus's ``registry_url``;
- ``CHECKED_VISIBILITY_TIMEOUT``: the broker's ``visibility_timeout``;
- ``CHECKED_ATOMIC=1``: the handler is ``atomic=True`` (with no transaction runner);
- ``CHECKED_REQUIRE``: the bus's ``require`` setting, comma-separated capability names.
"""

import json
import os

from celery import Celery

from celery_events import Event, EventBus

from ._effects import broker_url, record

app = Celery("checked", broker=os.environ.get("CHECKED_BROKER") or broker_url())
if os.environ.get("CHECKED_BROKER_USE_SSL"):
    app.conf.broker_use_ssl = json.loads(os.environ["CHECKED_BROKER_USE_SSL"])
if os.environ.get("CHECKED_VISIBILITY_TIMEOUT"):
    app.conf.broker_transport_options = {
        "visibility_timeout": float(os.environ["CHECKED_VISIBILITY_TIMEOUT"])
    }
bus = EventBus(
    app,
    service="checked",
    registry_url=os.environ.get("CHECKED_REGISTRY_URL") or None,
    require=[name for name in os.environ.get("CHECKED_REQUIRE", "").split(",") if name],
)


@bus.subscribe("user.registered", atomic=os.environ.get("CHECKED_ATOMIC") == "1")
def greet(event: Event) -> None:
    record("checked.greet", event)
