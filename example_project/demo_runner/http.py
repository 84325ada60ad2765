"""A tiny JSON-over-HTTP client for loopback services (standard library only)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any


def call(
    method: str,
    url: str,
    body: object | None = None,
    auth: tuple[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any]:
    """Send a request and return ``(status, decoded JSON body or text)``."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    text = raw.decode(errors="replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def answers(url: str, auth: tuple[str, str] | None = None) -> bool:
    """Whether ``url`` answers 200 right now."""
    try:
        return call("GET", url, auth=auth, timeout=2)[0] == 200
    except OSError:
        return False
