"""``celery -A proj eventbus ...``: operate the event bus from the shell.

Installed as a Celery sub-command through the ``celery.commands`` entry point, so it runs
with the app (and the bus) that ``-A`` names, like ``celery worker`` does::

    celery -A orders eventbus subscriptions
    celery -A orders eventbus catalog --format mermaid
    celery -A orders eventbus publish user.registered --data '{"user_id": 7}'
    celery -A orders eventbus status --json
    celery -A orders eventbus dead-letters list --handler orders.welcome_order
    celery -A orders eventbus dead-letters replay --event user.registered

Tables are printed for people; ``--json`` prints one JSON document for scripts. Exit codes:

==== =====================================================================================
0    done
1    nothing found or nothing matched (no subscriber for a publish, no such dead letter)
2    bad usage: a bad option or value, or an ``-A`` app without an event bus
3    the broker or the registry could not be reached or refused the command
==== =====================================================================================
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

import click
from celery.bin.base import CeleryCommand

from . import _plainjson
from ._all_dead_letters import AllDeadLetters
from ._cli_base import (
    ExitCode,
    _bus,
    _echo_json,
    _json_option,
    _translated_errors,
    _Usage,
)
from ._table import render_table
from .backends import first_broker_url
from .bus import EventBus
from .catalog import Catalog, version_list
from .contrib.flower import flower as _hardened_flower
from .deadletters import DeadLetter, Reason
from .errors import (
    describe,
)
from .status import read_status
from .trust.scopes import refused_subscription

__all__ = ["eventbus", "ExitCode"]

F = TypeVar("F", bound=Callable[..., Any])


@click.group(name="eventbus")
@click.pass_context
def eventbus(ctx: click.Context) -> None:
    """Operate the event bus of the app given with -A: subscriptions, catalog, publish,
    status, dead letters, a hardened Flower.

    Exit codes: 0 done, 1 nothing found or matched, 2 bad usage, 3 broker or registry
    unreachable.
    """


@eventbus.command(cls=CeleryCommand)
@click.option("--service", help="Only this service's subscriptions.")
@_json_option
@click.pass_context
def subscriptions(ctx: click.Context, service: str | None, as_json: bool) -> None:
    """List every subscription in the registry."""
    bus = _bus(ctx)
    with _translated_errors(bus):
        found = bus.registry.subscriptions()
        ignored = bus.registry.ignored()
    if service is not None:
        found = [s for s in found if s.service == service]
        ignored = [r for r in ignored if r.service == service]
    # Subscriptions this service's scopes refuse get no delivery from it (why, or None).
    refused = {id(s): refused_subscription(bus.scope_policy, s) for s in found}
    if as_json:
        rows: list[dict[str, Any]] = [
            {
                "pattern": s.pattern,
                "service": s.service,
                "handler": s.handler,
                "queue": s.queue,
                "registered_at": s.registered_at,
                "refused": refused[id(s)],
            }
            for s in found
        ]
        # A record publishers do not believe (see registry.py) is listed with its reason.
        rows += [
            {
                "service": r.service,
                "ignored": r.reason,
                "registered_at": r.registered_at,
                "using_registered_at": r.using_registered_at,
            }
            for r in ignored
        ]
        _echo_json(rows)
        if not found:
            ctx.exit(ExitCode.NOT_FOUND)
        return
    if ignored:
        click.echo(
            render_table(
                ["ignored record of", "registered", "reason"],
                [(r.service, _when(r.registered_at or 0.0), r.reason) for r in ignored],
            )
        )
    if found:
        shown_refused = any(refused.values())
        click.echo(
            render_table(
                ["pattern", "service", "handler", "queue", "registered"]
                + (["scopes"] if shown_refused else []),
                [
                    (s.pattern, s.service, s.handler, s.queue, _when(s.registered_at))
                    + (("refused" if refused[id(s)] else "",) if shown_refused else ())
                    for s in found
                ],
            )
        )
        for s in found:
            if refused[id(s)]:
                click.echo(f"refused: {s.handler} ({s.pattern}): {refused[id(s)]}", err=True)
    else:
        click.echo("No subscriptions" + (f" of service {service!r}." if service else "."), err=True)
    if not found:
        ctx.exit(ExitCode.NOT_FOUND)


@eventbus.command(cls=CeleryCommand)
@click.option("--service", "services", multiple=True, help="Print this service's user (repeatable); default: every service in the registry.")
@click.option("--password", default="CHANGE-ME", show_default=True, help="The password each line sets (the same for every user: edit them).")
@click.option("--aclfile", "as_aclfile", is_flag=True, help="Print aclfile lines (user ...) instead of ACL SETUSER commands.")
@click.pass_context
def acl(ctx: click.Context, services: tuple[str, ...], password: str, as_aclfile: bool) -> None:
    """Print least-privilege Redis ACL users: one per service, Flower's and the operator's.

    Pipe the output into redis-cli (as an admin user), then give each service the broker URL
    redis://SERVICE:PASSWORD@host:port/db. Run 'migrate-registry' first on a registry written
    by an older version. See celery_events/acl.py for the reason of each rule.
    """
    from . import acl as rules

    bus = _bus(ctx)
    with _translated_errors(bus):
        found = bus.registry.subscriptions()
    triples = [(s.service, s.handler, s.queue) for s in found]
    if bus.service in services or not services:
        # The -A app's own handlers count even before its worker registered them.
        triples += [(bus.service, h.task_name, h.queue) for h in bus.handlers]
        # Its worker consumes the app's default queue too. Celery's own default, 'celery',
        # is shared by every app that keeps it: any service could then take the others'
        # plain tasks, so give each app a task_default_queue of its own.
        default = str(bus.app.conf.task_default_queue or "celery")
        triples.append((bus.service, "", default))
        if default == "celery":
            click.echo(
                f"note: service {bus.service!r} uses Celery's default queue 'celery', which"
                " every app that keeps it shares: set task_default_queue to a queue of its own.",
                err=True,
            )
    options = bus.app.conf.broker_transport_options or {}
    prefix = str(options.get("global_keyprefix", ""))
    db = _db_of(bus)
    line = rules.aclfile_line if as_aclfile else rules.setuser_line
    template = bus.settings.queue_template
    for access in rules.accesses(triples, services, default_queue=template):
        click.echo(
            line(
                access.service,
                password,
                rules.service_rules(
                    access,
                    key_prefix=bus.settings.key_prefix,
                    queue_pattern=template.format(service="*"),
                    global_keyprefix=prefix,
                    db=db,
                ),
            )
        )
    click.echo(line("flower", password, rules.flower_rules(global_keyprefix=prefix, db=db)))
    click.echo(line("eventbus-operator", password, rules.operator_rules()))


def _db_of(bus: EventBus) -> int:
    from urllib.parse import urlparse

    path = urlparse(first_broker_url(bus.app.conf.broker_url)).path.strip("/")
    return int(path) if path.isdigit() else 0


@eventbus.command(name="migrate-registry", cls=CeleryCommand)
@click.pass_context
def migrate_registry(ctx: click.Context) -> None:
    """Move registry records of the layout before (one hash) to one key per service.

    Run once, as a user that may write every record, before confining services by ACLs.
    Publishers of this version read both layouts; older ones read only the old hash, so
    upgrade every publisher before migrating.
    """
    bus = _bus(ctx)
    with _translated_errors(bus):
        moved = bus.registry.store.migrate()
    if moved:
        click.echo(f"Moved the records of {len(moved)} service(s): {', '.join(moved)}.")
    else:
        click.echo("Nothing to move: no record of the layout before.")


@eventbus.command(cls=CeleryCommand)
@_json_option
@click.pass_context
def register(ctx: click.Context, as_json: bool) -> None:
    """Record the -A app's subscriptions and declarations in the registry now, as its worker
    does at start.

    Run it at deploy time so that events are queued for a service before its first worker
    starts, and so that a process that only publishes (a web app) records what it declares.
    A declaration whose schema breaks the registered one of its version is refused with the
    diff (exit 2) and nothing is recorded.
    """
    bus = _bus(ctx)
    with _translated_errors(bus):
        recorded = bus.register()
    declared = bus.declarations
    if as_json:
        _echo_json([{"pattern": s.pattern, "handler": s.handler, "queue": s.queue} for s in recorded])
        return
    click.echo(f"Recorded {len(recorded)} subscription(s) of service {bus.service!r}.")
    if recorded:
        click.echo(
            render_table(
                ["pattern", "handler", "queue"], [(s.pattern, s.handler, s.queue) for s in recorded]
            )
        )
    if declared:
        click.echo(f"Recorded {len(declared)} declaration(s) of service {bus.service!r}.")
        click.echo(
            render_table(
                ["name", "version", "compatibility", "schema"],
                [
                    (d.name, d.version or "", d.compatibility if d.schema else "", d.fingerprint or "")
                    for d in declared
                ],
            )
        )


@eventbus.command(cls=CeleryCommand)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "mermaid", "dot"]),
    default=None,
    help="Table (the default), JSON, or the graph of services and events as Mermaid or"
    " Graphviz DOT.",
)
@_json_option
@click.pass_context
def catalog(ctx: click.Context, fmt: str | None, as_json: bool) -> None:
    """List every event name declared, published or subscribed, with its publishers (and the
    versions each declared) and its subscribers (and the versions each accepts).

    ``--json`` is ``--format json``, like every other command's ``--json``; giving it with
    another ``--format`` is an error.
    """
    if as_json and fmt not in (None, "json"):
        raise _Usage(f"--json and --format {fmt} ask for two formats; pass only one of them.")
    fmt = "json" if as_json else fmt or "table"
    bus = _bus(ctx)
    with _translated_errors(bus):
        found = Catalog.load(bus.registry)
    if fmt == "json":
        _echo_json(found.to_json())
    elif fmt == "mermaid":
        click.echo(found.to_mermaid(), nl=False)
    elif fmt == "dot":
        click.echo(found.to_dot(), nl=False)
    elif found.entries:
        click.echo(
            render_table(
                ["event", "published by", "versions", "handler", "pattern", "accepts"],
                _catalog_rows(found),
            )
        )
    else:
        click.echo(
            "The catalog is empty: nothing was declared, published or subscribed yet.", err=True
        )
    if not found.entries:
        ctx.exit(ExitCode.NOT_FOUND)


def _catalog_rows(found: Catalog) -> list[tuple[str, str, str, str, str, str]]:
    # One row per handler; an event's name, publishers and their declared versions only on
    # its first row.
    rows = []
    for entry in found.entries:
        name, publishers = entry.name, ", ".join(entry.publishers) or "(not published yet)"
        versions = "; ".join(
            f"{p} {version_list(entry.versions_of(p))}"
            for p in entry.publishers
            if entry.versions_of(p)
        )
        if not entry.subscriptions:
            rows.append((name, publishers, versions, "(no subscriber)", "", ""))
        for sub in entry.subscriptions:
            accepts = version_list(sub.versions) if sub.versions else "any"
            rows.append((name, publishers, versions, sub.handler, sub.pattern, accepts))
            name = publishers = versions = ""
    return rows


_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


@eventbus.command(cls=CeleryCommand)
@click.argument("name")
@click.option("--data", default="{}", show_default=True, help="The event's data, a JSON object.")
@_json_option
@click.pass_context
def publish(ctx: click.Context, name: str, data: str, as_json: bool) -> None:
    """Publish event NAME from the shell and print its deliveries.

    Exits with 1 when no subscription matches (nothing is sent).
    """
    bus = _bus(ctx)
    try:
        # Our decoder: the stdlib's recursion on 10,000 levels would be a RecursionError
        # traceback, and a key given twice would silently lose a value.
        payload = _plainjson.loads(data, unique_keys=True)
    except _plainjson.NestedTooDeep as exc:
        raise _Usage(
            f"--data {_short(data)!r} nests far deeper than the bus takes (max_event_depth is"
            f" {bus.settings.max_event_depth} levels); flatten it."
        ) from exc
    except ValueError as exc:
        raise _Usage(
            f"--data {_short(data)!r} is not JSON ({describe(exc)}); pass a JSON object such as"
            """ '{"user_id": 7}'."""
        ) from exc
    if not isinstance(payload, dict):
        kind = _JSON_KINDS.get(type(payload), type(payload).__name__)
        raise _Usage(
            f"--data must be a JSON object such as '{{\"user_id\": 7}}', not {kind}"
            f" {_short(data)!r}."
        )
    with _translated_errors(bus):
        result = bus.publish(name, payload)
    if as_json:
        _echo_json(
            {
                "event": result.event.to_envelope(),
                "deliveries": [
                    {"service": d.service, "handler": d.handler, "queue": d.queue, "task_id": d.task_id}
                    for d in result.deliveries
                ],
            }
        )
    elif result.deliveries:
        click.echo(f"Published {name} (event {result.event.id}) to:")
        click.echo(
            render_table(
                ["service", "handler", "queue", "task id"],
                [(d.service, d.handler, d.queue, d.task_id) for d in result.deliveries],
            )
        )
    if not result.deliveries:
        click.echo(f"No subscription matches {name!r}; nothing was sent.", err=True)
        ctx.exit(ExitCode.NOT_FOUND)


@eventbus.command(cls=CeleryCommand)
@_json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show the backend and what it guarantees, then each subscribing service's waiting and
    in-flight deliveries, dead letters, and the age of its oldest waiting delivery."""
    bus = _bus(ctx)
    with _translated_errors(bus):
        backend = bus.backend
        found = None
        if backend.capabilities.queue_status:
            queues = backend.transport.queue_reader(bus.settings.publish_timeout)
            found = read_status(
                bus.registry.subscriptions(), queues, dead_letters=AllDeadLetters(bus).count
            )
    described = {
        "name": backend.name,
        "description": backend.description,
        "capabilities": backend.capabilities.to_json(),
    }
    if as_json:
        _echo_json(
            {"backend": described, "services": [s.to_json() for s in found or []]}
        )
    elif found:
        click.echo(
            render_table(
                ["service", "queues", "waiting", "in flight", "dead letters", "oldest waiting"],
                [
                    (
                        s.service,
                        ", ".join(q.name for q in s.queues),
                        s.waiting,
                        s.in_flight,
                        s.dead_letters,
                        _oldest(s.waiting, s.oldest_waiting),
                    )
                    for s in found
                ],
            )
        )
    if not as_json:
        if found:
            click.echo("")
        click.echo(f"Backend {backend.name}: {backend.description}")
        click.echo(
            render_table(
                ["capability", "provided"],
                [(name, "yes" if ok else "no") for name, ok in backend.capabilities.to_json().items()],
            )
        )
    if found is None:
        click.echo(
            f"The {backend.name} backend cannot read its queues (no queue_status); use the"
            " broker's own tools, such as rabbitmqctl list_queues.",
            err=True,
        )
        ctx.exit(ExitCode.USAGE)
    if not found:
        if not as_json:
            click.echo("No service has subscriptions in the registry.", err=True)
        ctx.exit(ExitCode.NOT_FOUND)


# -- dead letters ------------------------------------------------------------------------------


@eventbus.group(name="dead-letters")
def dead_letters() -> None:
    """List, show, replay or purge deliveries that gave up, across every service."""


def _filters(func: F) -> F:
    for option in reversed(
        [
            click.option("--service", help="Only this subscribing service's dead letters."),
            click.option("--handler", help="Only this handler's (its task name, svc.handler)."),
            click.option("--event", "event_name", help="Only deliveries of this event name."),
            click.option("--reason", help="Only this reason, such as retries_exhausted."),
        ]
    ):
        func = option(func)
    return func


@dead_letters.command(name="list", cls=CeleryCommand)
@_filters
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1),
              help="Show at most this many, newest first.")
@_json_option
@click.pass_context
def list_dead_letters(
    ctx: click.Context,
    service: str | None,
    handler: str | None,
    event_name: str | None,
    reason: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List dead letters, newest first."""
    bus = _bus(ctx)
    with _translated_errors(bus):
        letters = AllDeadLetters(bus).list(
            service=service, handler=handler, event_name=event_name, reason=reason, limit=limit
        )
    if as_json:
        _echo_json([letter.to_json() for letter in letters])
    elif letters:
        click.echo(
            render_table(
                ["id", "handler", "event", "reason", "attempts", "last failed", "error"],
                [
                    (
                        letter.id,
                        letter.handler or f"({letter.service})",
                        letter.event_name or "-",
                        letter.reason,
                        letter.attempts,
                        _when(letter.last_failed_at),
                        _short(f"{letter.error_type}: {letter.error_message}"),
                    )
                    for letter in letters
                ],
            )
        )
    else:
        click.echo("No dead letters" + _described(service, handler, event_name, reason), err=True)
    if not letters:
        ctx.exit(ExitCode.NOT_FOUND)


@dead_letters.command(name="show", cls=CeleryCommand)
@click.argument("id")
@_json_option
@click.pass_context
def show_dead_letter(ctx: click.Context, id: str, as_json: bool) -> None:
    """Show one dead letter: its envelope, error and traceback."""
    bus = _bus(ctx)
    with _translated_errors(bus):
        letter = AllDeadLetters(bus).get(id)
    if as_json:
        _echo_json(letter.to_json())
        return
    rows = [
        ("id", letter.id),
        ("service", letter.service),
        ("handler", letter.handler or "-"),
        ("event", f"{letter.event_name or '-'} ({letter.event_id or 'no id'})"),
        ("reason", letter.reason),
        ("error", f"{letter.error_type}: {letter.error_message}"),
        ("attempts", letter.attempts),
        ("first failed", _when(letter.first_failed_at)),
        ("last failed", _when(letter.last_failed_at)),
        ("worker", letter.hostname or "-"),
        ("task id", letter.task_id or "-"),
        ("queue", letter.queue or "-"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name.ljust(width)}  {value}")
    if letter.envelope is not None:
        click.echo("\nenvelope:")
        click.echo(json.dumps(letter.envelope, indent=2, ensure_ascii=False))
    if letter.reason == Reason.UNREADABLE_RECORD and letter.raw is not None:
        # The record itself is what could not be read: show its text as stored.
        click.echo("\nstored record:")
        click.echo(letter.raw.decode("utf-8", "backslashreplace"))
    elif letter.raw_base64 is not None:
        click.echo(f"\nraw message (base64): {letter.raw_base64}")
    if letter.traceback:
        click.echo("\n" + letter.traceback.rstrip())


def _selection(
    ctx: click.Context,
    bus: EventBus,
    id: str | None,
    every: bool,
    service: str | None,
    handler: str | None,
    event_name: str | None,
    reason: str | None,
) -> list[DeadLetter]:
    filters = (service, handler, event_name, reason)
    if id is None and not every and all(f is None for f in filters):
        raise _Usage(
            f"Name the dead letters to {ctx.info_name}: an ID, a filter (--service, --handler,"
            " --event, --reason), or --all for every one."
        )
    if id is not None and (every or any(f is not None for f in filters)):
        raise _Usage(f"Give either an ID or filters to {ctx.info_name}, not both.")
    return AllDeadLetters(bus).select(
        id, service=service, handler=handler, event_name=event_name, reason=reason
    )


@dead_letters.command(name="replay", cls=CeleryCommand)
@click.argument("id", required=False)
@_filters
@click.option("--all", "every", is_flag=True, help="Every dead letter of every service.")
@_json_option
@click.pass_context
def replay_dead_letters(
    ctx: click.Context,
    id: str | None,
    service: str | None,
    handler: str | None,
    event_name: str | None,
    reason: str | None,
    every: bool,
    as_json: bool,
) -> None:
    """Send dead letters again, each as a fresh delivery to its handler, and remove them."""
    bus = _bus(ctx)
    with _translated_errors(bus):
        letters = _selection(ctx, bus, id, every, service, handler, event_name, reason)
        replayed = AllDeadLetters(bus).replay(letters)
    if as_json:
        _echo_json([letter.to_json() for letter in replayed])
    elif replayed:
        click.echo(f"Replayed {len(replayed)} dead letter(s):")
        click.echo(
            render_table(
                ["id", "handler", "event", "event id"],
                [(lt.id, lt.handler, lt.event_name, lt.event_id) for lt in replayed],
            )
        )
    if not replayed:
        click.echo("No dead letters" + _described(service, handler, event_name, reason), err=True)
        ctx.exit(ExitCode.NOT_FOUND)


@dead_letters.command(name="purge", cls=CeleryCommand)
@click.argument("id", required=False)
@_filters
@click.option("--all", "every", is_flag=True, help="Every dead letter of every service.")
@_json_option
@click.pass_context
def purge_dead_letters(
    ctx: click.Context,
    id: str | None,
    service: str | None,
    handler: str | None,
    event_name: str | None,
    reason: str | None,
    every: bool,
    as_json: bool,
) -> None:
    """Delete dead letters for good."""
    bus = _bus(ctx)
    with _translated_errors(bus):
        letters = _selection(ctx, bus, id, every, service, handler, event_name, reason)
        purged = AllDeadLetters(bus).purge(letters)
    if as_json:
        _echo_json({"purged": purged, "ids": [letter.id for letter in letters]})
    elif purged:
        click.echo(f"Purged {purged} dead letter(s).")
    if not purged:
        click.echo("No dead letters" + _described(service, handler, event_name, reason), err=True)
        ctx.exit(ExitCode.NOT_FOUND)


def _described(*filters: str | None) -> str:
    names = ("service", "handler", "event", "reason")
    given = [f"{name} {value!r}" for name, value in zip(names, filters, strict=True) if value]
    return f" with {', '.join(given)}." if given else "."


def _short(text: str, width: int = 60) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def _when(stamp: float) -> str:
    if not stamp:
        return "-"
    return datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _oldest(waiting: int, seconds: float | None) -> str:
    # Deliveries waiting whose age the broker cannot tell (RabbitMQ's quorum queues): "?",
    # not the "-" of an empty queue.
    if seconds is None and waiting:
        return "?"
    return _age(seconds)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


# `celery eventbus flower`: Flower with credentials kept off the command line (its body is in
# contrib/flower.py, which imports Flower only when it runs).
eventbus.add_command(_hardened_flower)

# `celery eventbus keys ...` (celery_events/cli_keys.py): no app or broker needed.
from .cli_keys import keys as _keys  # noqa: E402

eventbus.add_command(_keys)

# `celery eventbus spec` (celery_events/cli_spec.py): the fleet as an AsyncAPI document.
from .cli_spec import spec as _spec  # noqa: E402

eventbus.add_command(_spec)

# `celery eventbus check` (celery_events/cli_contracts.py): declarations against the registry
# or a committed file.
from .cli_contracts import check as _check  # noqa: E402

eventbus.add_command(_check)

# `celery eventbus trace` (celery_events/cli_trace.py): an event's tree from the trace records.
from .cli_trace import trace as _trace  # noqa: E402

eventbus.add_command(_trace)
