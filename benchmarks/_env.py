"""A private redis-server and ``celery worker`` processes for the benchmarks, and the machine.

The server runs on a free loopback port with persistence off: the benchmarks measure the
publish and delivery paths, not the disk. It and every worker are stopped when the run ends.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import redis

from tests.harness import (
    ROOT,
    RabbitMQServer,
    RedisServer,
    rabbitmq_server_binary,
    redis_server_binary,
)


class PrivateRedis(RedisServer):
    """``redis-server`` on 127.0.0.1 and a free port, without persistence, started at once."""

    def __init__(self) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server).")
        super().__init__(binary, persistent=False)
        self.start()

    def client(self, timeout: float = 30) -> redis.Redis:
        return super().client(timeout)

    def stop(self, kill: bool = False) -> None:
        super().stop(kill)
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRabbitMQ(RabbitMQServer):
    """A private ``rabbitmq-server`` node on 127.0.0.1 (tests/harness.py), started at once."""

    def __init__(self) -> None:
        binary = rabbitmq_server_binary()
        if binary is None:
            raise SystemExit("rabbitmq-server is not installed (apt-get install rabbitmq-server).")
        super().__init__(binary)
        self.start()

    def version(self) -> str:
        from kombu import Connection

        with Connection(self.url) as connection:
            connection.connect()
            properties = connection.connection.server_properties
        version = properties.get("version", "unknown")
        return version.decode() if isinstance(version, bytes) else str(version)


class WorkerProcess:
    """``celery -A benchmarks.service worker`` with the given options, logging to a file.

    ``cwd`` is where ``benchmarks.service`` is imported from (the repository root by default);
    ``env`` may set ``PYTHONPATH`` to choose which checkout's ``celery_events`` the worker runs;
    ``module`` names another app module (the soak run's ``benchmarks.soak_service``).
    """

    def __init__(
        self,
        broker_url: str,
        args: list[str],
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
        module: str = "benchmarks.service",
    ) -> None:
        self.log_path = Path(tempfile.mkstemp(prefix="bench-worker-", suffix=".log")[1])
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", module, "worker", *args],
            cwd=cwd,
            env=dict(os.environ, BENCH_BROKER=broker_url, **(env or {})),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def check(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"the benchmark worker exited:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()
        self.log_path.unlink(missing_ok=True)


def machine(client: redis.Redis, rabbit: PrivateRabbitMQ | None = None) -> dict[str, Any]:
    """What the figures were measured on."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "celery": version("celery"),
        "kombu": version("kombu"),
        "redis-py": version("redis"),
        "hiredis": version("hiredis"),
        "redis-server": client.info("server")["redis_version"],
        **({"rabbitmq-server": rabbit.version(), "py-amqp": version("amqp")} if rabbit else {}),
        "celery-events": version("celery-events"),
        "celery-pubsub": version("celery-pubsub"),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
