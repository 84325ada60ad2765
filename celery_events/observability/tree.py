"""The tree of an event and every event it caused, built from its conversation's trace
records (:mod:`.records`), and drawn as text, JSON or a Mermaid flowchart.

An event published by a handler (its record names the delivery, and its ``causation_id``
the handled event) hangs under that delivery; one whose cause is known but not the delivery
hangs under the cause itself. Records of a service that does not keep them (or that
expired) are missing: an event with runs but no publish record is shown as unrecorded.

>>> from celery import Celery
>>> from celery_events import EventBus
>>> from celery_events.observability.tree import build, find, render_text
>>> from celery_events.testing import HandlerRunner
>>> bus = EventBus(Celery("orders", broker="memory://"), service="orders", trace_records=True)
>>> @bus.subscribe("order.placed")
... def reserve(event):
...     bus.publish("stock.reserved", {"order_id": event.data["order_id"]})
>>> @bus.subscribe("stock.reserved")
... def confirm(event): ...
>>> subscriptions = bus.register()
>>> event = bus.publish("order.placed", {"order_id": 7}).event
>>> runs = HandlerRunner().work(bus)
>>> roots = build(bus.backend.state.traces().load(event.correlation_id))
>>> print(render_text([find(roots, event.id)]), end="")   # the text ends its last line
order.placed ... from orders
└── orders orders.reserve: succeeded, on celery@..., waited ... ms, ran ... ms
    └── published stock.reserved ... from orders
        └── orders orders.confirm: succeeded, on celery@..., waited ... ms, ran ... ms
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..middleware.base import Outcome
from .records import RUNNING

__all__ = [
    "Run",
    "DeliveryNode",
    "EventNode",
    "build",
    "find",
    "to_json",
    "render_text",
    "render_mermaid",
    "WAITING",
    "SUCCEEDED",
    "RETRYING",
    "DEAD_LETTERED",
]

#: Delivery states (:attr:`DeliveryNode.state`).
WAITING = "waiting"
SUCCEEDED = "succeeded"
RETRYING = "retrying"
DEAD_LETTERED = "dead-lettered"


@dataclass
class Run:
    """One run of one delivery, as its record says."""

    attempt: int
    state: str
    host: str | None = None
    started: float | None = None
    handler_started: float | None = None
    handler_finished: float | None = None
    finished: float | None = None
    error: str | None = None
    reason: str | None = None
    countdown: float | None = None

    @property
    def handler_seconds(self) -> float | None:
        if self.handler_started is None or self.handler_finished is None:
            return None
        return self.handler_finished - self.handler_started


@dataclass
class DeliveryNode:
    """One delivery of an event to one handler, with its runs and the events it caused."""

    service: str
    handler: str
    queue: str | None
    task_id: str
    runs: list[Run] = field(default_factory=list)
    caused: list[EventNode] = field(default_factory=list)
    published_at: float | None = None

    @property
    def retries(self) -> int:
        """Runs that failed and were retried."""
        return sum(1 for r in self.runs if r.state == Outcome.RETRIED)

    @property
    def state(self) -> str:
        """``waiting`` (published, not started), ``running``, ``retrying`` (failed, runs
        again), ``succeeded``, ``dead-lettered``, or another outcome of its last run
        (``duplicate_skipped``, ``failed``...)."""
        states = [r.state for r in self.runs]
        if Outcome.SUCCEEDED in states:
            return SUCCEEDED
        if Outcome.DEAD_LETTERED in states:
            return DEAD_LETTERED
        if not self.runs:
            return WAITING
        last = self.runs[-1].state
        if last == Outcome.RETRIED:
            return RETRYING
        if last in (Outcome.WAITING, Outcome.HANDED_BACK):
            return WAITING
        return last

    @property
    def last(self) -> Run | None:
        return self.runs[-1] if self.runs else None

    @property
    def host(self) -> str | None:
        """The worker of its last run that names one."""
        for run in reversed(self.runs):
            if run.host:
                return run.host
        return None

    @property
    def queue_wait(self) -> float | None:
        """Seconds from the publish to its handler's first start."""
        started = [r.handler_started for r in self.runs if r.handler_started is not None]
        if self.published_at is None or not started:
            return None
        return max(0.0, min(started) - self.published_at)

    @property
    def handler_seconds(self) -> float | None:
        """How long its handler ran in its last run that finished."""
        for run in reversed(self.runs):
            if run.handler_seconds is not None:
                return run.handler_seconds
        return None

    @property
    def last_error(self) -> str | None:
        for run in reversed(self.runs):
            if run.error:
                return run.error
        return None

    @property
    def reason(self) -> str | None:
        for run in reversed(self.runs):
            if run.reason:
                return run.reason
        return None


@dataclass
class EventNode:
    """One event, its deliveries, and the events it caused that no delivery claims."""

    id: str
    name: str | None = None
    source: str | None = None
    time: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    #: The task id of the delivery whose handler published it, when one did.
    published_by: str | None = None
    published_at: float | None = None
    #: Whether its publish was deferred (publish on commit, the outbox) and not sent yet (or
    #: its send not recorded): its deliveries are those that ran.
    deferred: bool = False
    deliveries: list[DeliveryNode] = field(default_factory=list)
    caused: list[EventNode] = field(default_factory=list)

    @property
    def recorded(self) -> bool:
        """Whether its publish was recorded (its publisher keeps trace records)."""
        return self.name is not None

    def walk(self) -> list[EventNode]:
        """This event and every event it caused, depth first."""
        found = [self]
        for child in [c for d in self.deliveries for c in d.caused] + self.caused:
            found.extend(child.walk())
        return found


def _loads(raw: str) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def build(fields: dict[str, str]) -> list[EventNode]:
    """The trees of one conversation's records: its events that have no recorded cause
    (the conversation's first event, or events whose cause expired), oldest first."""
    events: dict[str, EventNode] = {}
    deliveries: dict[str, DeliveryNode] = {}

    def event(event_id: str) -> EventNode:
        node = events.get(event_id)
        if node is None:
            node = events[event_id] = EventNode(event_id)
        return node

    def delivery(node: EventNode, service: str, handler: str, queue: Any, task_id: str) -> None:
        if task_id in deliveries:
            return
        d = deliveries[task_id] = DeliveryNode(
            service, handler, queue if isinstance(queue, str) else None, task_id,
            published_at=node.published_at,
        )
        node.deliveries.append(d)

    runs: list[tuple[str, dict[str, Any]]] = []
    for name, raw in sorted(fields.items()):
        record = _loads(raw)
        if record is None:
            continue
        kind, _, rest = name.partition(":")
        if kind == "e":
            node = event(rest)
            node.name = record.get("name")
            node.source = record.get("source")
            node.time = record.get("time")
            node.correlation_id = record.get("correlation")
            node.causation_id = record.get("causation")
            node.published_by = record.get("by") or node.published_by
            node.deferred = bool(record.get("deferred"))
            node.published_at = _float(record.get("published"))
            for item in record.get("deliveries") or []:
                if isinstance(item, list) and len(item) == 4:
                    delivery(node, *item)
        elif kind == "b":
            # Who published it, kept apart from its e: record, which an outbox relay's send
            # (outside any handler) rewrites without it.
            node = event(rest)
            node.published_by = node.published_by or record.get("by")
        elif kind in ("d", "r"):
            runs.append((kind, record | {"task_id": rest.split(":")[0]}))
    for kind, record in runs:  # deliveries the publish record does not list (replays)
        event_id, task_id = record.get("event"), record["task_id"]
        if isinstance(event_id, str) and task_id not in deliveries:
            node = event(event_id)
            published = _float(record.get("replayed")) if kind == "d" else None
            handler = str(record.get("handler"))
            service = record.get("service") or handler.split(".")[0]  # {service}.{name}
            delivery(node, str(service), handler, record.get("queue"), task_id)
            deliveries[task_id].published_at = published or node.published_at
    for kind, record in runs:
        if kind != "r":
            continue
        attempt = record.get("attempt")
        deliveries[record["task_id"]].runs.append(
            Run(
                attempt=attempt if isinstance(attempt, int) else 0,
                state=str(record.get("state", RUNNING)),
                host=record.get("host"),
                started=_float(record.get("started")),
                handler_started=_float(record.get("handler_started")),
                handler_finished=_float(record.get("handler_finished")),
                finished=_float(record.get("finished")),
                error=record.get("error"),
                reason=record.get("reason"),
                countdown=_float(record.get("countdown")),
            )
        )
    for d in deliveries.values():
        d.runs.sort(key=lambda r: (r.attempt, r.started or r.handler_started or 0.0))
    roots = []
    for node in sorted(events.values(), key=lambda n: (n.published_at or 0.0, n.id)):
        cause = events.get(node.causation_id or "")
        if cause is None or cause is node:
            roots.append(node)
            continue
        by = deliveries.get(node.published_by or "")
        (by.caused if by is not None else cause.caused).append(node)
    return roots


def find(roots: list[EventNode], event_id: str) -> EventNode | None:
    """The node of ``event_id`` in ``roots``' trees, or None."""
    for root in roots:
        for node in root.walk():
            if node.id == event_id:
                return node
    return None


# -- JSON ------------------------------------------------------------------------------------


def _delivery_json(d: DeliveryNode) -> dict[str, Any]:
    return {
        "service": d.service,
        "handler": d.handler,
        "queue": d.queue,
        "task_id": d.task_id,
        "state": d.state,
        "retries": d.retries,
        "worker": d.host,
        "queue_wait_seconds": d.queue_wait,
        "handler_seconds": d.handler_seconds,
        "last_error": d.last_error,
        "reason": d.reason,
        "runs": [vars(r).copy() for r in d.runs],
        "caused": [to_json(c) for c in d.caused],
    }


def to_json(node: EventNode) -> dict[str, Any]:
    """One event's tree as plain data (``celery eventbus trace --json``)."""
    return {
        "id": node.id,
        "name": node.name,
        "source": node.source,
        "time": node.time,
        "correlation_id": node.correlation_id,
        "causation_id": node.causation_id,
        "published_by": node.published_by,
        "published_at": node.published_at,
        "deferred": node.deferred,
        "recorded": node.recorded,
        "deliveries": [_delivery_json(d) for d in node.deliveries],
        "caused": [to_json(c) for c in node.caused],
    }


# -- text ------------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _event_label(node: EventNode) -> str:
    if not node.recorded:
        return f"event {node.id} (publish not recorded)"
    label = f"{node.name} {node.id} from {node.source}"
    return label + " (deferred, not sent yet)" if node.deferred else label


def _state_label(d: DeliveryNode) -> str:
    state = d.state
    if d.retries:
        state += f", retried {d.retries} time{'s' if d.retries != 1 else ''}"
        if d.last_error:
            state += f" (last error {d.last_error})"
    if d.state == DEAD_LETTERED:
        if d.reason:
            state += f": {d.reason}"
        if d.last_error and not d.retries:
            state += f" ({d.last_error})"
    return state


def _delivery_label(d: DeliveryNode) -> str:
    parts = [f"{d.service} {d.handler}: {_state_label(d)}"]
    if d.host:
        parts.append(f"on {d.host}")
    if d.queue_wait is not None:
        parts.append(f"waited {_seconds(d.queue_wait)}")
    if d.handler_seconds is not None:
        parts.append(f"ran {_seconds(d.handler_seconds)}")
    return ", ".join(parts)


def _lines(node: EventNode, prefix: str, out: list[str]) -> None:
    children: list[tuple[str, Any]] = [("d", d) for d in node.deliveries]
    children += [("e", c) for c in node.caused]
    for i, (kind, child) in enumerate(children):
        last = i == len(children) - 1
        branch, below = ("└── ", "    ") if last else ("├── ", "│   ")
        if kind == "e":
            out.append(f"{prefix}{branch}caused {_event_label(child)}")
            _lines(child, prefix + below, out)
            continue
        out.append(f"{prefix}{branch}{_delivery_label(child)}")
        for j, caused in enumerate(child.caused):
            end = j == len(child.caused) - 1
            out.append(f"{prefix}{below}{'└── ' if end else '├── '}published "
                       f"{_event_label(caused)}")
            _lines(caused, prefix + below + ("    " if end else "│   "), out)


def render_text(nodes: list[EventNode]) -> str:
    """The trees as text, drawn with box-drawing characters as ``tree`` draws them."""
    out: list[str] = []
    for node in nodes:
        out.append(_event_label(node))
        if not node.deliveries and not node.caused:
            out.append("└── (no deliveries ran yet)" if node.deferred
                       else "└── (no deliveries: nothing subscribed)")
        _lines(node, "", out)
    return "\n".join(out) + "\n"


# -- Mermaid ---------------------------------------------------------------------------------


def _quoted(text: str) -> str:
    return '"' + text.replace('"', "#quot;") + '"'


def render_mermaid(nodes: list[EventNode]) -> str:
    """The trees as a Mermaid flowchart: events as rounded boxes, deliveries as boxes named
    by their state, an arrow from each delivery to the events its handler published."""
    out = ["flowchart TD"]
    names: dict[int, str] = {}

    def name(obj: object, kind: str) -> str:
        key = id(obj)
        if key not in names:
            names[key] = f"{kind}{len(names) + 1}"
        return names[key]

    def draw(node: EventNode, parent: str | None) -> None:
        me = name(node, "e")
        label = f"{node.name}<br/>{node.id}" if node.recorded else f"event {node.id}"
        out.append(f"    {me}({_quoted(label)})")
        if parent is not None:
            out.append(f"    {parent} --> {me}")
        for d in node.deliveries:
            dn = name(d, "d")
            text = f"{d.service} {d.handler}<br/>{_state_label(d)}"
            if d.host:
                text += f"<br/>{d.host}"
            out.append(f"    {dn}[{_quoted(text)}]")
            out.append(f"    {me} --> {dn}")
            for caused in d.caused:
                draw(caused, dn)
        for caused in node.caused:
            draw(caused, me)

    for node in nodes:
        draw(node, None)
    return "\n".join(out) + "\n"
