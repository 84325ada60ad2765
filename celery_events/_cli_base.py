"""What every ``celery eventbus`` command module shares: exit codes, errors turned into them,
the ``-A`` app's bus, and ``--json``.

Its own module so that the command modules (cli.py, cli_spec.py, cli_contracts.py) import it
and not each other.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import IntEnum
from typing import Any, TypeVar

import click

from .backends import first_broker_url, without_password
from .backends.base import StoreError
from .bus import EventBus, bus_for
from .deadletters import DeadLetterNotFound
from .errors import (
    BrokerError,
    CeleryEventsError,
    ConfigurationError,
    InvalidEventData,
    InvalidEventName,
    NoSubscribersError,
    PublishError,
    RegistryError,
    describe,
)

__all__ = ["ExitCode", "_NotFound", "_Usage", "_Unreachable", "_translated_errors", "_bus",
           "_json_option", "_echo_json", "_where"]

F = TypeVar("F", bound=Callable[..., Any])


class ExitCode(IntEnum):
    """What ``celery eventbus`` exits with, for scripts."""

    OK = 0
    NOT_FOUND = 1
    #: ``check`` found breaking changes (the same status as "nothing found": scripts test
    #: for non-zero).
    BREAKING = 1
    USAGE = 2
    UNREACHABLE = 3


class _NotFound(click.ClickException):
    exit_code = ExitCode.NOT_FOUND


class _Usage(click.ClickException):
    exit_code = ExitCode.USAGE


class _Unreachable(click.ClickException):
    exit_code = ExitCode.UNREACHABLE


@contextmanager
def _translated_errors(bus: EventBus) -> Iterator[None]:
    """Turn our errors into a short message and a documented exit code, no traceback."""
    try:
        yield
    except (NoSubscribersError, DeadLetterNotFound) as exc:
        raise _NotFound(str(exc)) from exc
    except (RegistryError, PublishError, BrokerError) as exc:
        raise _Unreachable(f"{exc}\n{_where(bus)}") from exc
    except (ConfigurationError, InvalidEventName, InvalidEventData) as exc:
        raise _Usage(str(exc)) from exc
    except StoreError as exc:
        raise _Unreachable(f"Could not reach Redis: {describe(exc)}.\n{_where(bus)}") from exc
    except CeleryEventsError as exc:
        raise _Usage(str(exc)) from exc


def _where(bus: EventBus) -> str:
    broker = first_broker_url(bus.app.conf.broker_url)
    registry = bus.settings.registry_url
    where = f"The app's broker is {without_password(broker)}"
    if registry is not None:
        where += f" and its registry {without_password(registry)}"
    return where + "."


def _bus(ctx: click.Context) -> EventBus:
    app = ctx.obj.app
    try:
        return bus_for(app)
    except ConfigurationError:
        pass
    # The bus may be created in a module the app imports on start-up (its `imports` and
    # `include`), as workers do before they look for it.
    try:
        app.loader.import_default_modules()
    except ImportError as exc:
        raise _Usage(
            f"The app {app.main!r} has no event bus, and importing its modules to find one"
            f" failed: {describe(exc)}."
        ) from exc
    try:
        return bus_for(app)
    except ConfigurationError as exc:
        raise _Usage(
            f"{exc} Pass the module that creates the bus with -A, for example"
            " `celery -A orders eventbus status`."
        ) from exc


def _json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(func)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))
