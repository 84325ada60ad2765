"""The documentation's code samples, found in its Markdown and run against the test servers.

A page (``docs/**/*.md``, and ``README.md``) runs top to bottom in a fresh directory of its own, its *project*:

- a fenced block whose ``title`` is a relative file path (Material's ``python title="orders/tasks.py"``,
  any language) is **written** to that path in the project, replacing what an earlier block wrote;
- a ``python`` block without such a title is **executed** in the page's Python session (one
  interpreter per page, kept from block to block, run in the project with the project on
  ``sys.path``; top-level ``await`` works);
- a ``pycon`` block is a doctest run in that same session (``...`` matches anything, whitespace
  is normalized);
- a ``console`` block is commands (``$ command``) each followed by its expected output, run by
  bash in the project; the output is compared as a doctest's (``...`` matches anything; none
  shown, not compared) and the exit status must be 0. A command ending in `` &`` runs in the
  background until the page ends, and its expected output is waited for (up to a minute)
  before the page goes on: show a worker's ``ready.`` line and the page waits for it.
  ``$ export NAME=value`` and ``$ cd DIR`` hold for the rest of the page;
- a ``sh`` or ``bash`` block runs each of its commands the same way, output not compared;
- a ``json`` block must parse;
- every other language (``text``, ``mermaid``, ``ini``, ``toml``, ...) is shown, not run.

Directives are HTML comments on the line before a block, so the site never shows them:

- ``<!-- sample: skip: REASON -->``: the next block is not run (the reason is required);
- ``<!-- sample: exit N -->``: the next console block's commands exit with status N;
- ``<!-- sample: output -->``: the next block is the output the previous ``python`` block printed;
- ``<!-- sample: log COMMAND -->``: the next block appears in the output of the background
  command that starts with COMMAND (waited for, up to a minute);
- ``<!-- sample: ports 9808 9809 -->`` (anywhere in the page): port numbers the samples listen
  on; each is replaced by a free port when the page runs (and mapped back in outputs);
- ``<!-- sample: servers redis rabbitmq ... -->`` (anywhere in the page): the servers the page
  needs, of ``redis`` (the default), ``rabbitmq``, ``rabbitmq-cluster``, ``sentinel``,
  ``postgres``.

A block inside an HTML comment is run like any other but not shown: set-up a reader needs not
see. The samples name the servers as a reader's machine has them (``redis://localhost:6379``,
``amqp://guest:guest@localhost:5672``, ``sentinel://localhost:26379``,
``postgresql://postgres@localhost:5432``); the runner points those at the test servers, in
every file, code and command, and maps the test servers' addresses in the output back.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
KERNEL = Path(__file__).with_name("kernel.py")

SERVERS = ("redis", "rabbitmq", "rabbitmq-cluster", "sentinel", "postgres")
RUN_LANGUAGES = {"python", "py", "pycon", "console", "sh", "bash", "json"}
COMMAND_TIMEOUT = 180.0
# Long enough for a worker to drain a page's 2,000 deliveries under both test groups' load
# (operations/sizing.md took 60 s so once).
WAIT_TIMEOUT = float(os.environ.get("SAMPLE_WAIT", 180))

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*sample:\s*(?P<body>.*?)\s*-->\s*$")
_TITLE = re.compile(r"""title\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_FILE_TITLE = re.compile(r"^[\w.\-]+(/[\w.\-]+)*\.[\w]+$|^[\w.\-]+(/[\w.\-]+)*/?(Makefile|Procfile|Dockerfile)$")


class SampleError(AssertionError):
    """A sample of a page did not do what the page says."""


@dataclass
class Block:
    """One fenced code block of a page, with the directives written just before it."""

    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    title: str | None
    text: str
    directives: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        shown = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{shown}:{self.line}"

    @property
    def file(self) -> str | None:
        """The project file this block writes, when its title is a relative path."""
        if self.title and _FILE_TITLE.match(self.title) and not self.title.startswith("/"):
            return self.title
        return None

    def directive(self, name: str) -> str | None:
        for directive in self.directives:
            word, _, rest = directive.partition(" ")
            word = word.rstrip(":")
            if word == name:
                return rest.strip()
        return None


@dataclass
class Page:
    path: Path
    blocks: list[Block]
    servers: list[str]
    #: Fixed ports the page's samples listen on; each gets a free one when run.
    ports: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        base = DOCS if self.path.is_relative_to(DOCS) else ROOT
        return str(self.path.relative_to(base))


def parse(path: Path) -> Page:
    """The fenced blocks of one Markdown page, in order, and the servers it asks for."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    servers: list[str] = []
    ports: list[int] = []
    pending: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        directive = _DIRECTIVE.match(line)
        if directive:
            body = directive.group("body")
            if body.startswith("ports"):
                ports.extend(int(word) for word in body.split()[1:])
            elif body.startswith("servers"):
                names = body.split()[1:]
                unknown = [name for name in names if name not in SERVERS]
                if unknown:
                    raise SampleError(f"{path}:{index + 1}: unknown servers {unknown}; known: {SERVERS}")
                servers.extend(names)
            else:
                pending.append(body)
            index += 1
            continue
        fence = _FENCE.match(line)
        if not fence:
            if line.strip():
                pending = []
            index += 1
            continue
        indent, marker, info = fence.group("indent"), fence.group("fence"), fence.group("info")
        body: list[str] = []
        index += 1
        closing = re.compile(rf"^[ \t]*{re.escape(marker[0])}{{{len(marker)},}}\s*$")
        while index < len(lines) and not closing.match(lines[index]):
            text = lines[index]
            body.append(text[len(indent):] if text.startswith(indent) else text.lstrip())
            index += 1
        if index >= len(lines):
            raise SampleError(f"{path}:{len(lines)}: a code block is never closed")
        index += 1
        language = info.split()[0].lstrip(".{").rstrip("}") if info.strip() else ""
        title_match = _TITLE.search(info)
        title = (title_match.group(1) or title_match.group(2)) if title_match else None
        start = index - len(body) - 1
        blocks.append(Block(path, start, language.lower(), title, "\n".join(body) + "\n", pending))
        pending = []
    return Page(path, blocks, servers or ["redis"], ports)


def pages() -> list[Page]:
    """Every page of the site, and the README (its landing page on the repository)."""
    return [parse(path) for path in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]]


# -- where the servers are -----------------------------------------------------------------


@dataclass
class Addresses:
    """Each server as the samples write it, and as the test run has it."""

    pairs: list[tuple[str, str]]
    #: Port numbers a page shows (``<!-- sample: ports 9808 -->``) and the free ones it gets.
    ports: dict[int, int] = field(default_factory=dict)

    def to_test(self, text: str) -> str:
        for shown, real in self.pairs:
            text = text.replace(shown, real)
        for port, free in self.ports.items():
            text = re.sub(rf"(?<![\w.-]){port}(?![\w-])", str(free), text)
        return text

    def to_shown(self, text: str) -> str:
        for shown, real in self.pairs:
            text = text.replace(real, shown)
        for port, free in self.ports.items():
            text = re.sub(rf"(?<![\w.-]){free}(?![\w-])", str(port), text)
        return text


def redis_pairs(url: str) -> list[tuple[str, str]]:
    base = url.rsplit("/", 1)[0]  # redis://127.0.0.1:PORT
    port = base.rsplit(":", 1)[1]
    return [
        ("redis://localhost:6379", base),
        ("redis://127.0.0.1:6379", base),
        ("--port 6379", f"--port {port}"),
        ("-p 6379", f"-p {port}"),
    ]


# -- running a page ------------------------------------------------------------------------


class Background:
    """A command of a console block that runs until the page ends."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str], log: Path) -> None:
        self.command = command
        self.log_path = log
        self._log: IO[bytes] = log.open("wb")
        self.process = subprocess.Popen(
            ["bash", "-c", command], cwd=cwd, env=env, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            with _ignoring(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with _ignoring(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        else:  # its children (a worker's pool) may outlive it
            with _ignoring(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()


class _ignoring:
    def __init__(self, *errors: type[BaseException]) -> None:
        self.errors = errors

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, value: Any, tb: Any) -> bool:
        return kind is not None and issubclass(kind, self.errors)


class Kernel:
    """The page's Python session: one interpreter that runs the page's blocks in turn."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(KERNEL)], cwd=cwd, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )

    def run(self, kind: str, code: str, name: str) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"kind": kind, "code": code, "name": name}) + "\n")
        self.process.stdin.flush()
        noise = []
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise SampleError(f"{name}: the Python session died:\n{''.join(noise)}")
            if line.startswith("\x00SAMPLE "):
                reply: dict[str, Any] = json.loads(line[len("\x00SAMPLE "):])
                reply["noise"] = "".join(noise)
                return reply
            noise.append(line)

    def stop(self) -> None:
        if self.process.poll() is None:
            with _ignoring(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def matches(want: str, got: str) -> bool:
    """Doctest's comparison: ``...`` matches anything, runs of whitespace are equal; a ``...``
    standing alone (a line of its own) may also stand for nothing, a blank line included."""
    return re.fullmatch(_pattern(want), " ".join(got.split()), re.S) is not None


def _escaped(text: str) -> str:
    # A pool process's number is whichever of the worker's processes took the task (a worker
    # without -c has one per core): a page's ForkPoolWorker-1 matches any of them.
    return _POOL_PROCESS.join(re.escape(part) for part in _POOL_PROCESS_RE.split(text))


_POOL_PROCESS = r"ForkPoolWorker-\d+"
_POOL_PROCESS_RE = re.compile(_POOL_PROCESS)


def _pattern(want: str) -> str:
    words: list[str | None] = []  # None: a lone "...", the words it stands for optional
    for word in want.split():
        if word != "...":
            words.append(word)
        elif not words or words[-1] is not None:
            words.append(None)
    pattern = ""
    for index, word in enumerate(words):
        if word is None:
            pattern += "(?: .*?)?" if index else "(?:.*? )?"
            if index and index == len(words) - 1:
                pattern = pattern[: -len("(?: .*?)?")] + "(?: .*)?"
            continue
        piece = ".*?".join(_escaped(part) for part in word.split("..."))
        pattern += f" {piece}" if index and words[index - 1] is not None else piece
    return ".*" if words == [None] else pattern


def appears(want: str, got: str) -> bool:
    """``want`` is somewhere in ``got`` (a background command's output, still growing)."""
    return re.search(_pattern(want), " ".join(got.split()), re.S) is not None


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def console_commands(text: str) -> Iterator[tuple[str, str]]:
    """``(command, expected output)`` of a console block; ``\\`` continues a command."""
    command: list[str] | None = None
    output: list[str] = []
    continued = False
    for line in text.splitlines():
        if continued and command is not None:
            command.append(line)
            continued = line.endswith("\\")
            continue
        if line.startswith("$ "):
            if command is not None:
                yield "\n".join(command), "\n".join(output)
            command, output = [line[2:]], []
            continued = line.endswith("\\")
        elif command is not None:
            output.append(line)
    if command is not None:
        yield "\n".join(command), "\n".join(output)


def shell_commands(text: str) -> Iterator[str]:
    """The commands of a ``sh`` block: its lines, without comments, ``\\`` continuing one."""
    current: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        current.append(line)
        if not stripped.endswith("\\"):
            yield "\n".join(current)
            current = []
    if current:
        yield "\n".join(current)


class PageRun:
    """One page's samples, run in order in ``project`` against the servers of ``addresses``."""

    def __init__(self, page: Page, project: Path, addresses: Addresses, env: dict[str, str]) -> None:
        self.page = page
        self.project = project
        self.cwd = project
        self.addresses = addresses
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **env,
            "PATH": f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}",
            "PYTHONPATH": str(project),
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "200",
        }
        self.background: list[Background] = []
        self.kernel: Kernel | None = None
        self.last_output = ""
        self.skipped: list[str] = []

    def run(self) -> None:
        try:
            for block in self.page.blocks:
                self.run_block(block)
        finally:
            self.stop()

    def stop(self) -> None:
        if self.kernel is not None:
            self.kernel.stop()
        for process in reversed(self.background):
            process.stop()

    def fail(self, block: Block, message: str) -> SampleError:
        logs = "".join(
            f"\n--- output of background `{process.command}` (last 3000 characters):\n"
            f"{self.addresses.to_shown(process.output())[-3000:]}"
            for process in self.background
        )
        return SampleError(f"{block.where}: {message}{logs}")

    def run_block(self, block: Block) -> None:
        skip = block.directive("skip")
        if skip is not None:
            if not skip:
                raise SampleError(f"{block.where}: `sample: skip` needs a reason")
            self.skipped.append(f"{block.where}: {skip}")
            return
        if block.file is not None:
            target = self.project / block.file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(self.addresses.to_test(block.text))
            return
        log_of = block.directive("log")
        if log_of is not None:
            self.check_log(block, log_of)
            return
        if block.directive("output") is not None:
            if not matches(block.text, self.last_output):
                raise self.fail(block, f"printed\n{self.last_output}\nnot\n{block.text}")
            return
        if block.language in ("python", "py"):
            self.run_python(block, "exec")
        elif block.language == "pycon":
            self.run_python(block, "doctest")
        elif block.language == "console":
            status = int(block.directive("exit") or 0)
            for command, want in console_commands(block.text):
                self.run_command(block, command, want, status)
        elif block.language in ("sh", "bash"):
            for command in shell_commands(block.text):
                self.run_command(block, command, None, 0)
        elif block.language == "json":
            try:
                json.loads(block.text)
            except ValueError as error:
                raise self.fail(block, f"this JSON does not parse: {error}") from None

    def run_python(self, block: Block, kind: str) -> None:
        if self.kernel is None:
            self.kernel = Kernel(self.cwd, self.env)
        reply = self.kernel.run(kind, self.addresses.to_test(block.text), block.where)
        output = self.addresses.to_shown(reply.get("output", ""))
        self.last_output = output
        if not reply["ok"]:
            raise self.fail(block, self.addresses.to_shown(reply["error"]) + reply["noise"])

    def run_command(self, block: Block, command: str, want: str | None, status: int) -> None:
        words = shlex.split(command, comments=True) if command.strip() else []
        if words[:1] == ["export"] and len(words) == 2 and "=" in words[1]:
            name, _, value = words[1].partition("=")
            self.env[name] = self.addresses.to_test(value)
            return
        if words[:1] == ["cd"] and len(words) == 2:
            self.cwd = (self.cwd / words[1]).resolve()
            return
        real = self.addresses.to_test(command)
        if command.rstrip().endswith("&") and not command.rstrip().endswith("&&"):
            log = self.project / f".background-{len(self.background)}.log"
            process = Background(real.rstrip().rstrip("&"), self.cwd, self.env, log)
            process.command = command.rstrip().rstrip("&").strip()
            self.background.append(process)
            if want and want.strip():
                shown = lambda: appears(want, self.addresses.to_shown(process.output()))  # noqa: E731
                if not wait_for(shown, WAIT_TIMEOUT):
                    raise self.fail(block, f"`{process.command}` never printed\n{want}")
            return
        try:
            done = subprocess.run(
                ["bash", "-c", real], cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, timeout=COMMAND_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise self.fail(block, f"`{command}` did not finish in {COMMAND_TIMEOUT:.0f}s") from None
        got = self.addresses.to_shown(done.stdout)
        self.last_output = got
        if done.returncode != status:
            raise self.fail(block, f"`{command}` exited {done.returncode}, not {status}:\n{got}")
        if want is not None and want.strip() and not matches(want, got):
            raise self.fail(block, f"`{command}` printed\n{got}\nnot\n{want}")

    def check_log(self, block: Block, command: str) -> None:
        found = [p for p in self.background if p.command.startswith(command)]
        if not found:
            raise self.fail(block, f"no background command starts with `{command}`")
        process = found[-1]
        shown = lambda: appears(block.text, self.addresses.to_shown(process.output()))  # noqa: E731
        if not wait_for(shown, WAIT_TIMEOUT):
            raise self.fail(block, f"`{process.command}` never printed\n{block.text}")
