"""A real Flower process for the integration tests, and headless Chromium to look at it."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode
from urllib.request import Request, urlopen

from .harness import ROOT, free_port, installed, wait_until

USER, PASSWORD = "user", "pass"

#: Chromium flags for a quiet, reproducible headless run on a CI machine.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--hide-scrollbars",
]


class Flower:
    """`celery -A <module> flower` on a free loopback port, with basic auth.

    ``hardened=True`` runs `celery -A <module> eventbus flower` instead, with no credentials on
    its command line: ``env`` (``FLOWER_BASIC_AUTH``) or ``args`` (``--basic-auth-file``) give them.
    """

    def __init__(
        self, module: str, env: dict[str, str], log_dir: Path, args: list[str],
        hardened: bool = False,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"flower-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        command = ["eventbus", "flower"] if hardened else ["flower", f"--basic-auth={USER}:{PASSWORD}"]
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", module, *command,
                "--address=127.0.0.1", f"--port={self.port}", *args,
            ],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        self._auth = {"Authorization": f"Basic {token}"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> Flower:
        def healthy() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"flower exited:\n{self.log()}")
            try:
                with urlopen(f"{self.url}/healthcheck", timeout=2) as response:
                    return bool(response.read() == b"OK")
            except (URLError, OSError):
                return False

        wait_until(healthy, timeout=timeout, interval=0.1, what="flower /healthcheck")
        return self

    def get(self, path: str, **params: Any) -> Any:
        """GET a Flower API path as the logged-in user and decode its JSON."""
        query = f"?{urlencode(params)}" if params else ""
        request = Request(f"{self.url}{path}{query}", headers=self._auth)
        with urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def status_without_auth(self, path: str) -> int:
        try:
            with urlopen(f"{self.url}{path}", timeout=10) as response:
                return int(response.status)
        except HTTPError as exc:
            return int(exc.code)

    def call(
        self, method: str, path: str, body: Any = None, auth: bool = True
    ) -> tuple[int, str]:
        """``(status, text)`` of an HTTP call, as the logged-in user unless ``auth`` is False."""
        data = None if body is None else json.dumps(body).encode()
        headers = {**(self._auth if auth else {}), "Content-Type": "application/json"}
        request = Request(f"{self.url}{path}", data=data, headers=headers, method=method)
        try:
            with urlopen(request, timeout=10) as response:
                return int(response.status), response.read().decode(errors="replace")
        except HTTPError as exc:
            return int(exc.code), exc.read().decode(errors="replace")

    def tasks(self, **params: Any) -> dict[str, dict[str, Any]]:
        return dict(self.get("/api/tasks", **params))

    def task(self, task_id: str) -> dict[str, Any]:
        return dict(self.get(f"/api/task/info/{task_id}"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_or_skip() -> str:
    """The Chromium binary; without one the test is skipped, or fails in CI (which installs
    it), so that a browser check never passes unrun there."""
    binary = installed(chromium_binary(), "chromium is not installed (apt-get install chromium)")
    return binary


def chromium(binary: str, profile: Path, *args: str, timeout: float = 60.0) -> str:
    """Run headless Chromium once with a fresh profile; return what it printed."""
    done = subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        timeout=timeout,
        check=True,
    )
    return done.stdout.decode(errors="replace")
