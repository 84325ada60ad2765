"""The metrics dashboard, drawn from a real run: real workers, a real Redis, a real Prometheus.

Two workers (``billing`` and ``mailer``, with ``metrics_port``) handle a stream of orders with
some slow handlers, retries and dead letters; Prometheus (Debian's ``prometheus`` package)
scrapes them every second; a Prometheus console page draws every panel of
``docs/grafana-dashboard.json`` (its own queries, ``$service`` as all services) and headless
Chromium takes its picture. ``UPDATE_METRICS_SCREENSHOT=1`` copies it to
``docs/images/metrics-dashboard.png``, which the Observability page shows.

Skipped when ``prometheus`` or ``chromium`` is not installed (``apt-get install prometheus
chromium``; ``scripts/system-packages`` installs them), failed in CI. It runs with the
documentation's tests (marker ``docs``), in the shorter group of ``make test``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..flower_harness import chromium, chromium_or_skip
from ..harness import ROOT, installed, wait_until

pytestmark = pytest.mark.docs

DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
RATE_INTERVAL = "15s"
RUN_SECONDS = 50

SERVICES = {
    "billing.py": """
        import time

        from celery import Celery
        from celery_events import EventBus, Reject

        app = Celery("billing", broker=BROKER)
        app.conf.task_default_queue = "billing"
        bus = EventBus(app, service="billing", metrics=True, metrics_port=PORT,
                       max_retries=2, retry_backoff=0.5)
        flaky_seen = set()


        @bus.subscribe("order.created")
        def charge(event):
            order_id = event.data["order_id"]
            time.sleep(0.01 + (order_id % 10) * 0.006)
            if order_id % 23 == 0:
                raise Reject("card_declined")
            if order_id % 7 == 0 and order_id not in flaky_seen:
                flaky_seen.add(order_id)
                raise ConnectionError("payment gateway timed out")
            bus.publish("invoice.sent", {"invoice_id": f"INV-{order_id}", "order_id": order_id})
    """,
    "mailer.py": """
        import time

        from celery import Celery
        from celery_events import EventBus

        app = Celery("mailer", broker=BROKER)
        app.conf.task_default_queue = "mailer"
        bus = EventBus(app, service="mailer", metrics=True, metrics_port=PORT,
                       max_retries=1, retry_backoff=0.2)


        @bus.subscribe("order.created")
        def confirm_order(event):
            time.sleep(0.004)


        @bus.subscribe("invoice.sent")
        def send_invoice(event):
            time.sleep(0.05 + (event.data["order_id"] % 5) * 0.02)
            if event.data["order_id"] % 31 == 0:
                raise RuntimeError("mail relay refused the attachment")
    """,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def console_page(dashboard: dict, seconds: int) -> str:
    """A Prometheus console page with one graph per panel of the Grafana dashboard."""
    graphs = []
    for number, panel in enumerate(dashboard["panels"]):
        if panel.get("type") != "timeseries":
            continue
        exprs = [
            target["expr"].replace('{service=~"$service"}', "").replace("$__rate_interval", RATE_INTERVAL)
            for target in panel["targets"]
        ]
        legends = [
            target.get("legendFormat", "[[__name__]]").replace("{{", "[[").replace("}}", "]]")
            for target in panel["targets"]
        ]
        full = panel["gridPos"]["w"] == 24
        width, height = ("col-12", 80) if full else ("col-6", 170)
        graphs.append(
            f"""
            <div class="{width} panel"><h5>{panel['title']}</h5><div id="g{number}"></div>
            <script>new PromConsole.Graph({{
              node: document.querySelector("#g{number}"),
              expr: {json.dumps(exprs)},
              name: {json.dumps(legends)},
              duration: {seconds},
              width: {1280 if full else 640}, height: {height},
              yAxisFormatter: PromConsole.NumberFormatter.humanize,
              yHoverFormatter: PromConsole.NumberFormatter.humanize,
              renderer: "line",
            }});</script></div>"""
        )
    static = "/classic/static"
    return textwrap.dedent(
        f"""\
        <!DOCTYPE html>
        <html><head><meta charset="utf-8"><title>{dashboard['title']}</title>
        <link rel="stylesheet" href="{static}/bootstrap4/css/bootstrap.min.css">
        <link rel="stylesheet" href="{static}/rickshaw/rickshaw.min.css">
        <link rel="stylesheet" href="{static}/css/prom_console.css">
        <script src="{static}/jquery/jquery.min.js"></script>
        <script src="{static}/d3/d3.min.js"></script>
        <script src="{static}/rickshaw/rickshaw.min.js"></script>
        <script>var PATH_PREFIX = "";</script>
        <script src="{static}/js/prom_console.js"></script>
        <style>body {{ padding: 12px 20px; font-size: 13px; }}
          h4 {{ margin-bottom: 2px; }} h5 {{ font-size: 14px; margin: 10px 0 2px; }}
          .panel {{ margin-bottom: 6px; }}</style>
        </head><body>
        <h4>{dashboard['title']}</h4>
        <div class="text-muted">Every panel of docs/grafana-dashboard.json, with its own query
        (all services), over the last {seconds} s of a run: two workers, a stream of orders,
        some slow handlers, retries and dead letters. Drawn by Prometheus's console graphs.</div>
        <div class="row">{''.join(graphs)}</div>
        </body></html>
        """
    )


class Prometheus:
    def __init__(self, binary: str, directory: Path, targets: list[str]) -> None:
        self.port = free_port()
        self.directory = directory
        (directory / "consoles").mkdir(parents=True)
        (directory / "libraries").mkdir()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": "celery-events", "static_configs": [{"targets": targets}]}
            ],
        }
        (directory / "prometheus.yml").write_text(json.dumps(config))
        self.log = open(directory / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--web.console.templates={directory / 'consoles'}",
                f"--web.console.libraries={directory / 'libraries'}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def query(self, expr: str) -> list[dict]:
        url = self.url("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)["data"]["result"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url("/-/ready"), timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture
def prometheus_binary() -> str:
    binary = installed(shutil.which("prometheus"), "prometheus is not installed (apt-get install prometheus)")
    return binary


@pytest.fixture
def project(redis_url: str, tmp_path: Path) -> Iterator[tuple[Path, dict[str, int]]]:
    ports = {"billing": free_port(), "mailer": free_port(), "orders": free_port()}
    directory = tmp_path / "project"
    directory.mkdir()
    for name, source in SERVICES.items():
        text = textwrap.dedent(source).replace("BROKER", repr(redis_url))
        text = text.replace("PORT", str(ports[name.removesuffix(".py")]))
        (directory / name).write_text(text)
    yield directory, ports


def start_worker(directory: Path, service: str) -> subprocess.Popen[bytes]:
    log = open(directory / f"{service}.log", "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", service, "worker", "-l", "INFO", "-c", "2",
         "-n", f"{service}@%h", "--without-mingle", "--without-gossip"],
        cwd=directory, stdout=log, stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONPATH=str(directory)),
    )


def test_the_dashboard_shows_a_run(
    prometheus_binary: str, project: tuple[Path, dict[str, int]], tmp_path: Path
) -> None:
    binary = chromium_or_skip()
    directory, ports = project
    dashboard = json.loads(DASHBOARD.read_text())

    # Given two workers that serve their metrics, scraped by Prometheus every second
    workers = [start_worker(directory, service) for service in ("billing", "mailer")]
    prometheus = Prometheus(
        prometheus_binary, tmp_path / "prometheus", [f"127.0.0.1:{port}" for port in ports.values()]
    )
    try:
        wait_until(prometheus.ready, timeout=60, interval=0.2, what="Prometheus ready")
        for service in ("billing", "mailer"):
            wait_until(
                lambda service=service: "ready." in (directory / f"{service}.log").read_text(),
                timeout=60, interval=0.2, what=f"the {service} worker ready",
            )

        # When orders are published for a while (their publisher's metrics scraped too), with
        # a burst in the middle
        publisher = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(f"""
                import time
                from celery import Celery
                from celery_events import EventBus
                import prometheus_client
                app = Celery("orders", broker={os.environ['CELERY_EVENTS_TEST_BROKER']!r})
                bus = EventBus(app, service="orders", metrics=True)
                # a publisher serves nothing itself: it exports the default registry
                prometheus_client.start_http_server({ports['orders']}, addr="127.0.0.1")
                start = time.monotonic()
                order_id = 0
                while time.monotonic() - start < {RUN_SECONDS}:
                    burst = 40 if order_id == 150 else 1
                    for _ in range(burst):
                        order_id += 1
                        bus.publish("order.created", {{"order_id": order_id}})
                    time.sleep(0.12)
                print(order_id)
            """)],
            cwd=directory, capture_output=True, text=True, timeout=RUN_SECONDS + 60,
        )
        assert publisher.returncode == 0, publisher.stderr
        # and every queue is drained, as Prometheus last saw it
        def drained() -> bool:
            waiting = prometheus.query(
                "sum(celery_events_queue_waiting) + sum(celery_events_queue_in_flight)"
            )
            return bool(waiting) and float(waiting[0]["value"][1]) == 0

        wait_until(drained, timeout=120, interval=0.5, what="the queues drained")

        # Then Prometheus has every series the dashboard draws
        assert prometheus.query('max_over_time(celery_events_published_total{service="orders"}[5m])')
        assert prometheus.query('sum(celery_events_deliveries_total{outcome="succeeded"})')
        assert prometheus.query("celery_events_dead_letters_total")
        assert prometheus.query("celery_events_queue_waiting")

        # And its console page draws every panel of the Grafana dashboard
        (tmp_path / "prometheus" / "consoles" / "celery-events.html").write_text(
            console_page(dashboard, RUN_SECONDS + 20)
        )
        page = prometheus.url("/consoles/celery-events.html")
        budget = "--virtual-time-budget=15000"
        dom = chromium(binary, tmp_path / "profile-dom", budget, "--dump-dom", page)
        for panel in dashboard["panels"]:
            assert panel["title"] in dom
        assert dom.count("rickshaw_graph") >= len(dashboard["panels"]) - 1
        screenshot = tmp_path / "metrics-dashboard.png"
        chromium(
            binary, tmp_path / "profile-shot", budget, "--window-size=1360,1290",
            f"--screenshot={screenshot}", page,
        )
        assert screenshot.stat().st_size > 20_000
        if os.environ.get("UPDATE_METRICS_SCREENSHOT"):
            shutil.copyfile(screenshot, ROOT / "docs" / "images" / "metrics-dashboard.png")
    finally:
        prometheus.stop()
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=30)
