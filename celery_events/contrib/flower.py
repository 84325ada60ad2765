"""A hardened Flower for the bus: ``celery -A proj eventbus flower [flower options]``.

Flower 2.2 shows every delivery, which makes it a window onto every event's data and a way to
send tasks. This command runs Flower itself (same options, same environment variables
``FLOWER_*``, same ``--conf`` file), with four differences:

- **Credentials never on the command line.** ``--basic-auth``, ``--oauth2-secret`` and
  ``--cookie-secret`` given as arguments are refused (any user of the machine reads a command
  line with ``ps``). Give the credentials in ``FLOWER_BASIC_AUTH`` (``user:password``, several
  separated by commas), in Flower's ``--conf`` file, or in a file of ``user:password`` lines
  named by ``--basic-auth-file`` or ``FLOWER_BASIC_AUTH_FILE``.
- **Authentication is required.** Without basic auth or OAuth (``--auth``) it does not start.
- **``/metrics`` needs the same authentication** as the rest of Flower (Prometheus scrapes it
  with ``basic_auth``); Flower serves it to anyone. ``/healthcheck`` (it says ``OK``) stays open.
- **Read-only by default.** Flower's own ``read_only`` option is turned on, so its API refuses
  (403) every endpoint that makes or steers a task: ``/api/task/send-task``, ``apply``,
  ``async-apply``, ``abort``, ``revoke``, ``timeout``, ``rate-limit`` and the worker controls
  (shutdown, pool, consumers); the UI hides their buttons. ``--read_only=False`` (or
  ``FLOWER_READ_ONLY=false``) turns them back on, with a warning: a delivery sent through
  Flower carries no signature, so a subscriber with signing on dead-letters it as
  ``invalid_signature`` and its handler never runs.

How: the command reuses Flower's own option handling (``flower.command``) and serves
:func:`hardened_flower_class`, a subclass of Flower's tornado application that adds one route for
``/metrics`` with tornado's public ``add_handlers``, which puts it before Flower's routes. No
Flower function is patched. Flower is not a dependency of the bus: install it (``pip install
flower``, the ``flower`` extra) where this command runs.
"""

from __future__ import annotations

import atexit
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import click
from celery.bin.base import CeleryCommand

__all__ = ["flower", "hardened_flower_class", "SECRET_OPTIONS", "read_basic_auth_file", "secret_arguments"]

logger = logging.getLogger(__name__)

#: Flower options whose value is a secret, refused on the command line.
SECRET_OPTIONS = ("basic_auth", "oauth2_secret", "cookie_secret")


class _Usage(click.ClickException):
    # The exit code of `celery eventbus` for bad usage (cli.ExitCode.USAGE).
    exit_code = 2


def secret_arguments(argv: list[str] | tuple[str, ...]) -> list[str]:
    """The names of the options of ``argv`` that carry a secret (``--basic-auth=...``)."""
    found = []
    for arg in argv:
        if not arg.startswith("-"):
            continue
        name = arg.lstrip("-").partition("=")[0].replace("-", "_")
        if name in SECRET_OPTIONS:
            found.append(arg.partition("=")[0])
    return found


def read_basic_auth_file(path: str | Path) -> list[str]:
    """The ``user:password`` lines of ``path`` (blank lines and ``#`` comments skipped).

    Raises :class:`click.ClickException` naming the file and what is wrong with it.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise _Usage(
            f"Cannot read the basic auth file {str(path)!r}: {exc.strerror or exc}."
        ) from None
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, colon, password = line.partition(":")
        if not colon or not user or not password:
            raise _Usage(
                f"Line {number} of the basic auth file {str(path)!r} is not user:password"
                " (one user a line, a colon between the name and the password)."
            )
        entries.append(line)
    if not entries:
        raise _Usage(
            f"The basic auth file {str(path)!r} holds no user:password line; write one, for"
            " example ops:<a long random password>."
        )
    return entries


def hardened_flower_class() -> type[Any]:
    """Flower's tornado application class with ``/metrics`` behind its authentication.

    Built on call: Flower is optional, imported when the command runs, not when the CLI loads.
    """
    import tornado.web
    from flower.app import Flower, rewrite_handler
    from flower.views.monitor import Metrics

    class AuthenticatedMetrics(Metrics):
        """Flower's Prometheus page, for authenticated users only."""

        @tornado.web.authenticated
        async def get(self) -> None:
            await super().get()

    class _HardenedFlower(Flower):
        """Flower's tornado application with ``/metrics`` behind its authentication."""

        def __init__(self, options: Any = None, **kwargs: Any) -> None:
            super().__init__(options=options, **kwargs)
            routes: list[Any] = [(r"/metrics", AuthenticatedMetrics)]
            if self.options.url_prefix:
                routes = [rewrite_handler(route, self.options.url_prefix) for route in routes]
            # A host rule added here is tried before Flower's own routes (tornado inserts it
            # ahead of the wildcard rule), and paths it does not match fall through to them.
            self.add_handlers(r".*", routes)

    return _HardenedFlower


def _require_flower() -> None:
    try:
        import flower  # noqa: F401
    except ImportError:
        raise _Usage(
            "Flower is not installed: pip install 'flower>=2.2,<2.3' (or the extra"
            " celery-events[flower]) where this command runs."
        ) from None


@click.command(
    name="flower",
    cls=CeleryCommand,
    context_settings={"ignore_unknown_options": True},
)
@click.option(
    "--basic-auth-file",
    type=click.Path(dir_okay=False),
    envvar="FLOWER_BASIC_AUTH_FILE",
    help="A file of user:password lines, one a user (instead of FLOWER_BASIC_AUTH).",
)
@click.argument("flower_argv", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def flower(ctx: click.Context, basic_auth_file: str | None, flower_argv: tuple[str, ...]) -> None:
    """Run Flower hardened: credentials from the environment or a file (never the command
    line), authentication required, /metrics behind it, task sending and worker control off.

    Any other Flower option passes through (--port=5555, --address=127.0.0.1, --conf=...).
    """
    secrets = secret_arguments(flower_argv)
    if secrets:
        raise _Usage(
            f"{', '.join(secrets)} on the command line shows the secret to every user of this"
            " machine (ps). Put the credentials in the FLOWER_BASIC_AUTH environment variable"
            " (user:password), in a file given with --basic-auth-file (or"
            " FLOWER_BASIC_AUTH_FILE), or in Flower's --conf file (FLOWER_OAUTH2_SECRET and"
            " FLOWER_COOKIE_SECRET for the others)."
        )
    _require_flower()
    from flower import command
    from flower.urls import settings
    from tornado.options import options

    # Before the environment, the --conf file and the arguments are read, so any of them may
    # still turn it off explicitly.
    options.read_only = True
    command.apply_env_options()
    command.apply_options(sys.argv[0], list(flower_argv))
    if basic_auth_file is not None:
        options.basic_auth = [*(options.basic_auth or []), *read_basic_auth_file(basic_auth_file)]
    if not options.basic_auth and not options.auth:
        raise _Usage(
            "Flower would let anyone in: give basic auth credentials in FLOWER_BASIC_AUTH"
            " (user:password) or a file (--basic-auth-file, FLOWER_BASIC_AUTH_FILE), or turn"
            " on OAuth with --auth."
        )
    command.extract_settings()
    command.setup_logging()
    if not options.read_only:
        logger.warning(
            "Flower runs with read_only off: its users can send tasks and control workers."
            " Deliveries sent through Flower carry no signature; subscribers with signing on"
            " dead-letter them (invalid_signature)."
        )

    app = ctx.obj.app
    server = hardened_flower_class()(capp=app, options=options, **settings)
    atexit.register(server.stop)
    signal.signal(signal.SIGTERM, command.sigterm_handler)
    port = server.start_http_server()
    if not ctx.obj.quiet:
        command.print_banner(app, "ssl_options" in settings, port)
    try:
        server.start()
    except (KeyboardInterrupt, SystemExit):
        pass
