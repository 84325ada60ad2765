"""What the demo's services observed, read back: a trace tree, the exported spans, a worker's
Prometheus metrics. Each check returns ``(ok, detail)`` for ``scenario.expect``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from . import http

#: The counter of deliveries by outcome (labels service, handler, outcome).
DELIVERIES = "celery_events_deliveries_total"


def tree_succeeded(tree: Any, expected: dict[str, list[str]]) -> tuple[bool, str]:
    """Whether ``tree`` (``celery eventbus trace --json``) holds, for each event name of
    ``expected``, a delivery to each of its handlers, all succeeded."""
    found: dict[str, dict[str, str]] = {}
    for event in _events(tree):
        states = found.setdefault(str(event.get("name")), {})
        for delivery in event.get("deliveries") or []:
            states[str(delivery.get("handler"))] = str(delivery.get("state"))
    wrong = [
        f"{name} → {handler}: {found.get(name, {}).get(handler, 'missing')}"
        for name, handlers in expected.items()
        for handler in handlers
        if found.get(name, {}).get(handler) != "succeeded"
    ]
    deliveries = sum(len(states) for states in found.values())
    detail = f"{len(found)} events, {deliveries} deliveries"
    return not wrong, detail + (f"; {', '.join(wrong)}" if wrong else "")


def _events(node: Any) -> Iterator[dict[str, Any]]:
    """Every event of a trace tree: a node with ``deliveries``, wherever it is nested."""
    if isinstance(node, dict):
        if "deliveries" in node:
            yield node
        for value in node.values():
            yield from _events(value)
    elif isinstance(node, list):
        for value in node:
            yield from _events(value)


def spans_of(directory: Path, event_id: str, consumers: list[str]) -> tuple[bool, str]:
    """Whether the spans exported under ``directory`` hold the send span of ``event_id`` and a
    process span of it in each of ``consumers``, linked to (or a child of) the send span."""
    from observability_config import read_spans

    spans = read_spans(directory)
    of_event = [s for s in spans if s.get("attributes", {}).get("messaging.message.id") == event_id]
    sends = [s for s in of_event if s["kind"] == "SpanKind.PRODUCER"]
    if not sends:
        return False, f"{len(spans)} spans, no send span of {event_id[:8]}… yet"
    # Any send span of the event counts (a relay or a replay makes one more), so that the
    # answer does not depend on the order the files are read in.
    sent = {s["context"]["span_id"] for s in sends}
    linked = {
        str(s["resource"]["attributes"].get("service.name"))
        for s in of_event
        if s["kind"] == "SpanKind.CONSUMER"
        and (
            s.get("parent_id") in sent
            or any(link["context"]["span_id"] in sent for link in s.get("links") or [])
        )
    }
    files = len(list(directory.glob("*.jsonl")))
    missing = [service for service in consumers if service not in linked]
    detail = f"{len(spans)} spans in {files} files; {sends[0]['name']!r} by {_service(sends[0])}"
    if missing:
        return False, detail + f", no linked process span in {', '.join(missing)} yet"
    return True, detail + f", linked process spans in {', '.join(sorted(linked))}"


def _service(span: dict[str, Any]) -> str:
    return str(span["resource"]["attributes"].get("service.name"))


def deliveries_counted(
    url: str, service: str, expected: dict[tuple[str, str], int]
) -> tuple[bool, str]:
    """Whether the metrics at ``url`` count, for ``service``, the ``expected`` number of
    deliveries per ``(handler, outcome)``."""
    status, text = http.call("GET", url, timeout=5)
    if status != 200 or not isinstance(text, str):
        return False, f"HTTP {status}"
    counted: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == DELIVERIES and labels.get("service") == service:
                counted[(labels.get("handler", ""), labels.get("outcome", ""))] += int(sample.value)
    shown = ", ".join(f"{h.split('.')[-1]} {o} {counted[(h, o)]}" for h, o in expected)
    return all(counted[key] == count for key, count in expected.items()), f"{DELIVERIES}: {shown}"
