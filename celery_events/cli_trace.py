"""``celery -A proj eventbus trace EVENT_ID``: where an event went, and what it caused.

::

    celery -A orders eventbus trace 0b5c...            # the tree of one event
    celery -A orders eventbus trace --correlation 0b5c...  # a whole conversation
    celery -A orders eventbus trace 0b5c... --json
    celery -A orders eventbus trace 0b5c... --format mermaid > trace.mmd

Read from the trace records in the ``-A`` app's state store (services that publish and
handle with ``trace_records=True`` write them, shared by every service of the store): each
event, every event it caused (their ``causation_id``), each delivery's state (waiting,
running, retrying, succeeded, dead-lettered...), how many times it was retried and why, its
worker, how long it waited in its queue and how long its handler ran. No OpenTelemetry
backend is involved. Exits 1 when nothing is recorded, 3 when the store cannot be reached.
"""

from __future__ import annotations

import click
from celery.bin.base import CeleryCommand

from ._cli_base import _bus, _echo_json, _json_option, _NotFound, _translated_errors, _Usage
from .observability.tree import EventNode, build, find, render_mermaid, render_text, to_json

__all__ = ["trace"]


@click.command(cls=CeleryCommand)
@click.argument("event_id", required=False)
@click.option(
    "--correlation", "correlation_id", metavar="ID",
    help="Show every event of this correlation id (a whole conversation).",
)
@click.option(
    "--format", "fmt", type=click.Choice(["text", "mermaid"]), default="text",
    show_default=True, help="A terminal tree, or a Mermaid flowchart.",
)
@_json_option
@click.pass_context
def trace(
    ctx: click.Context, event_id: str | None, correlation_id: str | None, fmt: str,
    as_json: bool,
) -> None:
    """Show the tree of EVENT_ID and every event it caused, across services: each delivery
    with its state, worker and timings."""
    if (event_id is None) == (correlation_id is None):
        raise _Usage("Give an EVENT_ID or --correlation ID (one of them).")
    bus = _bus(ctx)
    ttl = bus.settings.trace_ttl
    with _translated_errors(bus):
        store = bus.backend.state.traces()
        if event_id is not None:
            # A conversation's first event is its correlation id: its group outlives the
            # event's own index while later events keep writing to it.
            correlation_id = store.correlation_of(event_id) or event_id
        fields = store.load(correlation_id) if correlation_id is not None else {}
    roots = build(fields)
    nodes: list[EventNode] = roots
    if event_id is not None:
        node = find(roots, event_id)
        nodes = [] if node is None else [node]
    if not nodes:
        what = f"event {event_id}" if event_id is not None else f"correlation id {correlation_id}"
        raise _NotFound(
            f"No trace record of {what}. Records expire trace_ttl ({ttl:g} s) after their"
            " last write, and are written only by services with trace_records=True: turn it"
            " on in the publisher (and the subscribers) to trace its events."
        )
    if as_json:
        _echo_json([to_json(n) for n in nodes] if event_id is None else to_json(nodes[0]))
    elif fmt == "mermaid":
        click.echo(render_mermaid(nodes), nl=False)
    else:
        click.echo(render_text(nodes), nl=False)
