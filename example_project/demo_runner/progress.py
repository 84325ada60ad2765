"""A start-up display: one line per service, redrawn in place on a terminal.

On a terminal each line shows a spinner until its service answers; elsewhere (CI logs, pipes)
a line is printed once per service when it is ready, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO

_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


@dataclass
class _Line:
    name: str
    what: str
    state: str = "starting"  # starting | ready | failed
    detail: str = ""
    since: float = 0.0


class Progress:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.lines: dict[str, _Line] = {}
        self._drawn = 0
        self._tick = 0

    def add(self, name: str, what: str) -> None:
        self.lines[name] = _Line(name, what, since=time.monotonic())
        if not self.tty:
            self._print(f"  … {name:<22} {what}")
        self.draw()

    def ready(self, name: str, detail: str = "") -> None:
        self._set(name, "ready", detail)

    def failed(self, name: str, detail: str = "") -> None:
        self._set(name, "failed", detail)

    def _set(self, name: str, state: str, detail: str) -> None:
        line = self.lines[name]
        line.state, line.detail = state, detail
        if not self.tty:
            self._print(self._render(line))
        self.draw()

    def _render(self, line: _Line) -> str:
        if line.state == "ready":
            mark = "✓"
        elif line.state == "failed":
            mark = "✗"
        else:
            mark = _SPINNER[self._tick % len(_SPINNER)]
        seconds = f"{time.monotonic() - line.since:4.1f}s" if line.state == "starting" else ""
        detail = line.detail or (line.what if line.state != "ready" else "")
        return f"  {mark} {line.name:<22} {detail} {seconds}".rstrip()

    def draw(self) -> None:
        """Redraw every line (on a terminal); call it while waiting to animate spinners."""
        if not self.tty:
            return
        self._tick += 1
        out = []
        if self._drawn:
            out.append(f"\x1b[{self._drawn}F")  # back to the first line of the block
        for line in self.lines.values():
            out.append("\x1b[2K" + self._render(line) + "\n")
        self.stream.write("".join(out))
        self.stream.flush()
        self._drawn = len(self.lines)

    def _print(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
