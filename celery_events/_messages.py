"""Celery task messages for deliveries, built the way ``app.send_task`` builds them.

The headers come from Celery's own ``app.amqp.as_task_v2``, once per event; every delivery of
that event shares the body (the envelope is the same for all subscribers) and differs only in
task name, task id and shown name. The result is, field for field, what ``send_task`` would put
on a Redis queue, so workers and Flower cannot tell the difference.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Any

from celery import Celery

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_EMBED_JSON = json.dumps(_EMBED)


@dataclass
class TaskMessage:
    """One delivery's message, before the transport wraps it."""

    task_name: str
    queue: str
    #: The subscribing service and the event, for the delivery ledger.
    service: str
    event_id: str
    headers: dict[str, Any]
    properties: dict[str, Any]
    #: ``(args, kwargs, embed)``, as Celery's protocol 2 has it (what publish signals see).
    body: tuple[list[Any], dict[str, Any], dict[str, Any]]
    #: The body encoded as JSON text, shared by every delivery of one event.
    body_json: str
    #: ``body_json`` in base64, as kombu's virtual transports carry bodies.
    body_b64: str


def encode_body(envelope_head: dict[str, Any], data_json: str) -> str:
    """Return ``json.dumps([[envelope], {}, embed])`` without encoding the data twice.

    ``envelope_head`` is the envelope without ``data``; the already validated JSON of the data
    is spliced in as the last key, which is where ``json.dumps`` would have put it.
    """
    head = json.dumps(envelope_head)
    return f'[[{head[:-1]}, "data": {data_json}}}], {{}}, {_EMBED_JSON}]'


def build_messages(
    app: Celery,
    envelope: dict[str, Any],
    body_json: str,
    targets: list[tuple[str, str, str, str]],
    *,
    parent_id: str | None,
    root_id: str | None,
) -> list[TaskMessage]:
    """Build one message per ``(task_name, queue, shown_name, service)`` target."""
    if not targets:
        return []
    first_id = str(uuid.uuid4())
    task_name, _, shadow, _ = targets[0]
    template = app.amqp.as_task_v2(
        first_id,
        task_name,
        args=[envelope],
        kwargs={},
        reply_to=app.thread_oid,
        root_id=root_id,
        parent_id=parent_id,
        shadow=shadow,
        ignore_result=None,
    )
    body = template.body
    body_b64 = base64.b64encode(body_json.encode()).decode()
    messages = []
    event_id = envelope["id"]
    for index, (task_name, queue, shadow, service) in enumerate(targets):
        task_id = first_id if index == 0 else str(uuid.uuid4())
        headers = dict(template.headers)
        headers["task"] = task_name
        headers["id"] = task_id
        headers["shadow"] = shadow
        headers["root_id"] = root_id or task_id
        properties = {"correlation_id": task_id, "reply_to": template.properties["reply_to"]}
        messages.append(
            TaskMessage(
                task_name, queue, service, event_id, headers, properties, body, body_json, body_b64
            )
        )
    return messages


def redis_payload(message: TaskMessage) -> str:
    """Wrap ``message`` exactly as kombu's Redis transport stores it in a queue list."""
    return json.dumps(
        {
            "body": message.body_b64,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": message.headers,
            "properties": {
                **message.properties,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": message.queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )
