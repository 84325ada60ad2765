"""``celery -A proj eventbus spec``: the whole fleet as an AsyncAPI 3.0.0 document.

::

    celery -A orders eventbus spec > asyncapi.json
    celery -A orders eventbus spec --format yaml --out docs/asyncapi.yaml
    celery -A orders eventbus spec --title "Shop events" --version 2.4.0

It is read from the registry the ``-A`` app's bus uses (every service's declarations and
subscriptions, and the names publishers were seen publishing), so no other service's code is
imported. The server is the app's broker, without its password. ``--format yaml`` needs
PyYAML (``pip install 'celery-events[contracts]'``). An empty registry prints an empty
document and exits 1, as ``catalog`` does.
"""

from __future__ import annotations

from pathlib import Path

import click
from celery.bin.base import CeleryCommand

from ._cli_base import ExitCode, _bus, _translated_errors
from .backends import broker_url_of
from .bus import EventBus
from .spec.asyncapi import ASYNCAPI_VERSION, DEFAULT_TITLE, Broker, asyncapi_document
from .spec.asyncapi import to_json as _to_json
from .spec.asyncapi import to_yaml as _to_yaml

__all__ = ["spec", "broker_of"]


def broker_of(bus: EventBus) -> Broker:
    """The :class:`~celery_events.spec.Broker` ``bus`` runs on."""
    exchange = None
    if bus.backend.name == "amqp":
        from .backends.amqp.topology import Topology

        # The events exchange is named from the key prefix alone (see that module).
        exchange = Topology(bus.settings.key_prefix).exchange_name
    return Broker(bus.backend.name, broker_url_of(bus.app), exchange)


@click.command(cls=CeleryCommand)
@click.option(
    "--format", "fmt", type=click.Choice(["json", "yaml"]), default="json", show_default=True,
    help="JSON, or YAML (needs PyYAML).",
)
@click.option(
    "--out", type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the document to this file instead of printing it.",
)
@click.option("--title", default=DEFAULT_TITLE, show_default=True, help="The document's title.")
@click.option(
    "--version", "doc_version",
    help="The document's version; default: the date of the newest registration.",
)
@click.pass_context
def spec(
    ctx: click.Context, fmt: str, out: Path | None, title: str, doc_version: str | None
) -> None:
    """Print the AsyncAPI 3.0.0 document of every service sharing the registry: channels per
    event name, a message per declared version, send and receive operations per service."""
    bus = _bus(ctx)
    with _translated_errors(bus):
        registry = bus.registry
        document = asyncapi_document(
            registry.declarations(),
            registry.subscriptions(),
            backend=broker_of(bus),
            title=title,
            version=doc_version,
            published=registry.publishers(),
        )
        text = _to_yaml(document) if fmt == "yaml" else _to_json(document)
    if out is None:
        click.echo(text, nl=False)
    else:
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise click.UsageError(f"Cannot write {out}: {exc.strerror or exc}.") from None
        click.echo(
            f"Wrote the AsyncAPI {ASYNCAPI_VERSION} document ({len(document['channels'])}"
            f" channel(s), {len(document['operations'])} operation(s)) to {out}.",
            err=True,
        )
    if not document["channels"]:
        click.echo("The registry is empty: nothing was declared, published or subscribed yet.",
                   err=True)
        ctx.exit(ExitCode.NOT_FOUND)
