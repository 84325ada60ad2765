"""Reading what reached the broker: the events queued for a service, by event id."""

from __future__ import annotations

import base64
import json
from collections import Counter

import redis


def queued_envelopes(client: redis.Redis, queue: str) -> list[dict[str, object]]:
    """The envelopes of every delivery waiting in ``queue``, oldest first."""
    envelopes = []
    for raw in reversed(client.lrange(queue, 0, -1)):
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        envelopes.append(args[0])
    return envelopes


def queued_counts(client: redis.Redis, queue: str) -> Counter[str]:
    """How many deliveries of each event id wait in ``queue``."""
    return Counter(str(e["id"]) for e in queued_envelopes(client, queue))
