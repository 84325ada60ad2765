"""A bus on RabbitMQ with its registry there and its state store elsewhere (the Django
database) loads neither the Redis backend nor redis-py: nothing of Redis is on its path."""

from __future__ import annotations

import json
import subprocess
import sys

from ..harness import ROOT

# A fresh interpreter: this one has loaded redis for other tests.
PROBE = """
import json, sys
from celery import Celery
from celery_events import EventBus

class OtherState:
    '''A state store that is no Redis (the Django database's, in a real fleet).'''

bus = EventBus(Celery("x", broker="amqp://guest@127.0.0.1:1//"), service="x", state=OtherState())
backend = bus.backend
print(json.dumps({
    "backend": backend.name,
    "description": backend.description,
    "loaded": sorted(m for m in sys.modules
                     if m.split(".")[0] == "redis" or m.startswith("celery_events.backends.redis")),
}))
"""


def test_rabbitmq_with_its_registry_there_and_another_state_store_never_loads_redis() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["backend"] == "amqp"
    assert "registry on RabbitMQ" in found["description"]
    assert found["loaded"] == []
