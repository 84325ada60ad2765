"""``celery -A app eventbus check``: the -A app's contracts against the fleet's, for CI.

::

    celery -A orders eventbus check                           # against the registry
    celery -A orders eventbus check --against contracts.json  # against a committed file
    celery -A orders eventbus check --write contracts.json    # record the app's contracts
    celery -A orders eventbus check --json

Like ``buf breaking``: each breaking change is listed under its event name and version (a
schema that breaks the registered one of its version under its compatibility mode, a version
no longer declared that a subscriber still needs, a handler's schema that cannot read a
publisher's), and the command exits 1; it exits 0 when nothing breaks. ``--write FILE``
writes the app's declarations and subscriptions into FILE (keeping other services' entries;
see :mod:`celery_events.contracts.snapshot`), after the check when ``--against`` is given too,
and only when nothing breaks. A missing or unreadable file is bad usage (exit 2).
"""

from __future__ import annotations

from pathlib import Path

import click
from celery.bin.base import CeleryCommand

from ._cli_base import ExitCode, _bus, _echo_json, _json_option, _translated_errors
from .backends import first_broker_url, without_password
from .contracts import check as checks
from .contracts import snapshot
from .declarations import Declaration
from .registry import Subscription

__all__ = ["check"]


@click.command(name="check", cls=CeleryCommand)
@click.option(
    "--against",
    "against",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A contracts file (written with --write) to check against instead of the registry.",
)
@click.option(
    "--write",
    "write_to",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the app's declarations and subscriptions into this contracts file.",
)
@_json_option
@click.pass_context
def check(ctx: click.Context, against: Path | None, write_to: Path | None, as_json: bool) -> None:
    """Check the -A app's declarations and handlers against the registry (or a contracts
    file) and list every breaking change; exit 1 if there is one."""
    bus = _bus(ctx)
    declarations = bus.declarations
    written: dict[str, int] | None = None
    with _translated_errors(bus):
        subscriptions = bus.subscriptions()
        if write_to is not None and against is None:
            # Writing alone checks nothing: it records what the code declares now.
            written = _write(write_to, bus.service, declarations, subscriptions)
            if as_json:
                _echo_json({"service": bus.service, "written": str(write_to), **written})
            else:
                click.echo(_wrote(written, bus.service, write_to))
            return
        if against is None:
            registered = bus.registry.declarations()
            registered_subscriptions = bus.registry.subscriptions()
            where = "the registry at " + without_password(
                bus.settings.registry_url or first_broker_url(bus.app.conf.broker_url)
            )
        else:
            registered, registered_subscriptions = snapshot.read(against)
            where = str(against)
        found = checks.breaking(
            bus.service, declarations, subscriptions, registered, registered_subscriptions
        )
        if write_to is not None and not found:
            written = _write(write_to, bus.service, declarations, subscriptions)
    if as_json:
        _echo_json(
            {
                "service": bus.service,
                "against": where,
                "checked": len(declarations),
                "subscriptions_checked": len(subscriptions),
                "breaking": [b.to_json() for b in found],
                **({"written": str(write_to), **written} if written is not None else {}),
            }
        )
    elif found:
        click.echo(checks.report(found))
        click.echo(
            f"{len(found)} breaking change(s) in service {bus.service!r}, checked against"
            f" {where}.",
            err=True,
        )
    else:
        click.echo(
            f"No breaking changes: {len(declarations)} declaration(s) and"
            f" {len(subscriptions)} subscription(s) checked against {where}."
        )
        if written is not None:
            click.echo(_wrote(written, bus.service, write_to))
    if found:
        if write_to is not None:
            click.echo(f"{write_to} left as it was: the breaking changes come first.", err=True)
        ctx.exit(ExitCode.BREAKING)


def _wrote(written: dict[str, int], service: str, path: Path | None) -> str:
    return (
        f"Wrote {written['declarations']} declaration(s) and {written['subscriptions']}"
        f" subscription(s) of service {service!r} to {path}."
    )


def _write(
    path: Path, service: str, declarations: list[Declaration], subscriptions: list[Subscription]
) -> dict[str, int]:
    """Put ``service``'s contracts in the file ``path``, each declaration keeping the schemas
    the file held before for it; how many of each were written."""
    existing = snapshot.read(path)[0] if path.exists() else []
    recorded = checks.with_history(service, declarations, existing)
    snapshot.write(path, service, recorded, subscriptions)
    return {"declarations": len(recorded), "subscriptions": len(subscriptions)}


