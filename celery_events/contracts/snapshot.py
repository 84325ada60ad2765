"""A contracts file: the fleet's declarations and subscriptions, committed next to the code.

``celery -A users eventbus check --write contracts.json`` writes (or updates) the ``-A``
service's part of the file; ``--against contracts.json`` checks the local declarations against
it as it would against the registry, so CI needs no broker. One file may hold every service of
a fleet: writing one service keeps the others. The text is stable (sorted keys and entries,
two-space indents, no timestamps), so an unchanged service writes the same bytes and a change
shows as a readable diff in review::

    {
      "format": "celery-events contracts 1",
      "services": {
        "users": {
          "declarations": [{"name": "user.registered", "version": 1, "schema": {...}, ...}],
          "subscriptions": [{"pattern": "order.created", "handler": "users.remember", ...}]
        }
      }
    }

Each service's entry is what its registry record holds (:meth:`RegisteredDeclaration.to_json`,
:meth:`Subscription.to_json`), read by the registry's own parser.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ..registry import RegisteredDeclaration, Subscription, _BadRecord, _parse_record

__all__ = ["FORMAT", "ContractsFileError", "read", "write", "text_of"]

#: The ``format`` member of every contracts file this version writes and reads.
FORMAT = "celery-events contracts 1"


class ContractsFileError(ConfigurationError):
    """A contracts file is missing, unreadable, or not one ``--write`` made."""


def read(path: Path) -> tuple[list[RegisteredDeclaration], list[Subscription]]:
    """Every declaration and subscription of every service in the contracts file ``path``.

    Raises :class:`ContractsFileError` saying what is wrong with it and how to make one.
    """
    services = _services(path)
    declarations: list[RegisteredDeclaration] = []
    subscriptions: list[Subscription] = []
    for service, entry in sorted(services.items()):
        record = {"registered_at": 0, **entry} if isinstance(entry, dict) else entry
        try:
            _, found, declared = _parse_record(service, json.dumps(record).encode("utf-8"))
        except _BadRecord as exc:
            raise ContractsFileError(f"{path}: service {service!r}: {exc}") from None
        subscriptions.extend(found)
        declarations.extend(declared)
    declarations.sort(key=lambda d: (d.name, d.version or 0, d.service))
    return declarations, subscriptions


def write(
    path: Path,
    service: str,
    declarations: Sequence[RegisteredDeclaration],
    subscriptions: Sequence[Subscription],
) -> None:
    """Put ``service``'s ``declarations`` and ``subscriptions`` in the contracts file
    ``path`` (made if missing), keeping the other services' entries."""
    services = _services(path) if path.exists() else {}
    services[service] = {
        "declarations": [
            d.to_json() for d in sorted(declarations, key=lambda d: (d.name, d.version or 0))
        ],
        "subscriptions": [s.to_json() for s in sorted(subscriptions, key=lambda s: s.handler)],
    }
    try:
        path.write_text(text_of(services), encoding="utf-8")
    except OSError as exc:
        raise ContractsFileError(f"Cannot write the contracts file {path}: {exc.strerror or exc}.") from None


def text_of(services: dict[str, Any]) -> str:
    """The file's text for ``services`` (service -> entry): the same bytes for the same
    contracts."""
    document = {"format": FORMAT, "services": services}
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _services(path: Path) -> dict[str, Any]:
    make = "Write one with `celery -A <app> eventbus check --write FILE`."
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ContractsFileError(f"The contracts file {path} does not exist. {make}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ContractsFileError(f"Cannot read the contracts file {path}: {reason}.") from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ContractsFileError(f"The contracts file {path} is not JSON: {exc}. {make}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ContractsFileError(
            f"{path} is not a contracts file (its format is not {FORMAT!r}). {make}"
        )
    services = document.get("services")
    if not isinstance(services, dict):
        raise ContractsFileError(f"{path}: its services are not an object. {make}")
    return services
