"""Runs the docstring examples (``>>>``) of one module of the package, as the reference shows them.

``python tests/docs/docstrings.py MODULE`` imports ``MODULE``, finds its examples with doctest's
``DocTestFinder`` (each docstring of an object the module defines, once) and runs them:

- each docstring in a fresh namespace, so an example holds its own imports and set-up, as a
  reader copying it from the site would need; but the reference shows a class's methods under
  the class, so they share the class's namespace: the class docstring's example runs first and
  what it made (``bus``) is the methods' examples' (which run in the order of the source);
- with ``ELLIPSIS`` and ``NORMALIZE_WHITESPACE``; top-level ``await`` works (one event loop per
  module);
- against the test servers: ``redis://127.0.0.1:6379`` and ``redis://localhost:6379`` in an
  example (its code and its shown output) are the test Redis named by ``CELERY_EVENTS_DOCS_REDIS``;
  ``amqp://guest:guest@localhost//`` and ``http://guest:guest@localhost:15672`` the RabbitMQ
  node and management API named by ``CELERY_EVENTS_DOCS_AMQP`` and ``CELERY_EVENTS_DOCS_MANAGEMENT``
  (set for the RabbitMQ backend's modules);
- a module of ``celery_events.contrib.django`` runs in a minimal Django project, configured
  here: a migrated SQLite database, ``CELERY_EVENTS = {"service": "shop", "app":
  "proj.celery.app", "outbox": True}`` with ``proj/celery.py`` holding ``app = Celery("shop",
  broker=<the test Redis>)``, and two installed apps, ``orders`` and ``billing``, each with a
  ``subscribers`` module subscribing one handler to ``order.placed``.

It prints doctest's report of the failures and exits 1 when an example fails, 0 otherwise (the
last line says how many examples ran).
"""

from __future__ import annotations

import ast
import asyncio
import doctest
import importlib
import os
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
READER_REDIS = ("redis://127.0.0.1:6379", "redis://localhost:6379")
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
CO_COROUTINE = 0x80

loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)


def test_redis() -> str:
    """The test Redis without its database number: ``redis://127.0.0.1:PORT``."""
    url = os.environ.get("CELERY_EVENTS_DOCS_REDIS", "redis://127.0.0.1:6379/0")
    return url.rsplit("/", 1)[0] if url.count("/") > 2 else url


def rewrite(text: str, redis: str) -> str:
    for address in READER_REDIS:
        text = text.replace(address, redis)
    amqp = os.environ.get("CELERY_EVENTS_DOCS_AMQP")
    if amqp:
        text = text.replace("amqp://guest:guest@localhost//", amqp)
    management = os.environ.get("CELERY_EVENTS_DOCS_MANAGEMENT")
    if management:
        text = text.replace("http://guest:guest@localhost:15672", management)
    return text


def configure_django(redis: str) -> None:
    """A minimal Django project for the integration's examples (see the module docstring)."""
    import django
    from django.conf import settings
    from django.core.management import call_command

    project = Path(tempfile.mkdtemp(prefix="celery-events-docstrings-"))
    files = {
        "proj/__init__.py": "",
        "proj/celery.py": f'from celery import Celery\n\napp = Celery("shop", broker="{redis}/0")\n',
    }
    for app, handler in (("orders", "confirm"), ("billing", "invoice")):
        files[f"{app}/__init__.py"] = ""
        files[f"{app}/subscribers.py"] = (
            "from celery_events.contrib.django import bus\n\n\n"
            f'@bus.subscribe("order.placed")\ndef {handler}(event):\n    pass\n'
        )
    for name, text in files.items():
        (project / name).parent.mkdir(exist_ok=True)
        (project / name).write_text(text)
    sys.path.insert(0, str(project))
    settings.configure(
        SECRET_KEY="celery-events-docstrings",
        USE_TZ=True,
        INSTALLED_APPS=["django.contrib.contenttypes", "celery_events.contrib.django", "orders", "billing"],
        # A file, not ":memory:", so that a relay's thread sees the tables.
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(project / "db.sqlite3")}},
        CELERY_EVENTS={"service": "shop", "app": "proj.celery.app", "outbox": True},
    )
    django.setup()
    call_command("migrate", verbosity=0)


def _compile(source: str, filename: str, mode: str, flags: int = 0, dont_inherit: bool = False) -> Any:
    return compile(source, filename, mode, flags | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit)


def _exec(code: Any, globs: dict[str, Any]) -> None:
    if code.co_flags & CO_COROUTINE:  # the example awaits at top level
        loop.run_until_complete(types.FunctionType(code, globs)())
    else:
        exec(code, globs)


def owner(module: types.ModuleType, test: doctest.DocTest) -> str:
    """The name of the class whose namespace ``test`` runs in, or the test's own name."""
    parts = test.name.removeprefix(module.__name__).lstrip(".").split(".")
    if parts[0] and isinstance(getattr(module, parts[0], None), type):
        return f"{module.__name__}.{parts[0]}"
    return test.name


def order(module: types.ModuleType, test: doctest.DocTest) -> tuple[str, int, int]:
    """Tests of one namespace together, the class's docstring first, then by source line."""
    key = owner(module, test)
    return (key, 0 if test.name == key else 1, test.lineno if test.lineno is not None else 1 << 30)


def main(module_name: str) -> int:
    redis = test_redis()
    if module_name.startswith("celery_events.contrib.django"):
        configure_django(redis)
    module = importlib.import_module(module_name)
    # doctest compiles and runs each example with the names `compile` and `exec` of its own
    # module: these add top-level `await`, as the site's pycon blocks have it.
    doctest.compile = _compile  # type: ignore[attr-defined]
    doctest.exec = _exec  # type: ignore[attr-defined]
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=FLAGS, verbose=False)
    namespaces: dict[str, dict[str, Any]] = {}
    for test in sorted(finder.find(module), key=lambda test: order(module, test)):
        test.globs = namespaces.setdefault(owner(module, test), {"__name__": "__main__"})
        for example in test.examples:
            example.source = rewrite(example.source, redis)
            example.want = rewrite(example.want, redis)
        runner.run(test, out=sys.stdout.write, clear_globs=False)
    result = runner.summarize(verbose=False)
    print(f"{module_name}: {result.attempted} examples, {result.failed} failed")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1]))
