"""The RabbitMQ fan-out spike: which mechanism to publish one event to N subscription queues.

    python -m benchmarks.amqp_spike              # latency and atomicity, about 10 minutes
    python -m benchmarks.amqp_spike --smoke      # a few seconds: checks that it runs

Raw py-amqp against a private RabbitMQ node (tests/harness.py), publisher confirms on (or an
AMQP transaction), persistent messages, durable queues. The mechanisms:

- ``per-queue``: one ``basic_publish`` per subscription queue, each waiting for its confirm
  (the shape of main's kombu backend);
- ``topic``: one ``basic_publish`` to a durable topic exchange bound to the N queues, one
  confirm (the broker copies the message to every bound queue);
- ``window``: N ``basic_publish`` to the N queues, then one wait for all N confirms;
- ``tx``: ``tx.select`` once, N ``basic_publish``, ``tx.commit`` per event.

Each against classic and quorum queues. Then atomicity: a publisher process publishing events
to 10 queues in a loop is SIGKILLed at a random moment, 40 times per mechanism; an event that
reached some of the queues but not all is *partial*. And one raw Celery ``app.send_task`` with
``confirm_publish``, the yardstick of the issue's cost target.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

import amqp

EXCHANGE = "spike.events"
MECHANISMS = ("per-queue", "topic", "window", "tx")
#: Queue types: classic (v1, 3.10's default), classic v2 (``x-queue-version: 2``), quorum.
KINDS = {
    "classic": {},
    "classic-v2": {"x-queue-version": 2},
    "quorum": {"x-queue-type": "quorum"},
}


def connect(url: str) -> amqp.Connection:
    host = url.split("@", 1)[1].split("/", 1)[0]
    connection = amqp.Connection(host=host, userid="guest", password="guest", virtual_host="/")
    connection.connect()
    return connection


def queue_names(kind: str, n: int) -> list[str]:
    return [f"spike.{kind}.{n}.q{i}" for i in range(n)]


def declare(channel: Any, kind: str, n: int) -> list[str]:
    """N durable queues of ``kind`` (classic or quorum), each bound to the topic exchange with
    the routing key ``ev.<kind>.<n>`` (so ``topic`` reaches exactly these N)."""
    channel.exchange_declare(EXCHANGE, "topic", durable=True, auto_delete=False)
    names = queue_names(kind, n)
    arguments = KINDS[kind]
    for name in names:
        channel.queue_declare(name, durable=True, auto_delete=False, arguments=arguments)
        channel.queue_bind(name, EXCHANGE, routing_key=f"ev.{kind}.{n}")
    return names


class Publisher:
    """One connection, one channel, publishing events to N queues by one mechanism."""

    def __init__(self, url: str, mechanism: str, kind: str, names: list[str]) -> None:
        self.connection = connect(url)
        self.channel = self.connection.channel()
        self.mechanism, self.kind, self.names = mechanism, kind, names
        self.routing_key = f"ev.{kind}.{len(names)}"
        self.published = 0  # delivery tags of this channel (confirm mode counts from 1)
        self.acked = 0
        self.returned: list[Any] = []
        if mechanism == "tx":
            self.channel.tx_select()
        elif mechanism == "window":
            self.channel.confirm_select()
            self.channel.events["basic_ack"].add(self._on_ack)
            self.channel.events["basic_nack"].add(self._on_nack)
        self.channel.events["basic_return"].add(lambda *a: self.returned.append(a))

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self.acked = max(self.acked, tag)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        raise RuntimeError(f"broker nacked delivery tag {tag}")

    def publish(self, body: bytes) -> None:
        channel = self.channel

        def message() -> amqp.Message:
            mode = 1 if self.mechanism == "topic-transient" else 2
            return amqp.Message(body, delivery_mode=mode, content_type="application/json")

        if self.mechanism == "per-queue":
            for name in self.names:
                channel.basic_publish_confirm(message(), exchange="", routing_key=name,
                                              mandatory=True)
        elif self.mechanism == "topic-unconfirmed":  # what the confirm costs (not durable)
            channel.basic_publish(message(), exchange=EXCHANGE, routing_key=self.routing_key,
                                  mandatory=True)
        elif self.mechanism in ("topic", "topic-transient"):
            channel.basic_publish_confirm(message(), exchange=EXCHANGE,
                                          routing_key=self.routing_key, mandatory=True)
        elif self.mechanism == "window":
            for name in self.names:
                channel.basic_publish(message(), exchange="", routing_key=name, mandatory=True)
            self.published += len(self.names)
            while self.acked < self.published:
                self.connection.drain_events(timeout=10)
        elif self.mechanism == "tx":
            for name in self.names:
                channel.basic_publish(message(), exchange="", routing_key=name, mandatory=True)
            channel.tx_commit()
        else:
            raise ValueError(self.mechanism)

    def close(self) -> None:
        self.connection.close()


def purge(channel: Any, names: list[str]) -> None:
    for name in names:
        channel.queue_purge(name)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def latency(
    url: str,
    smoke: bool,
    mechanisms: list[str] = list(MECHANISMS),  # noqa: B006 (never mutated)
    kinds: list[str] = ["classic", "quorum"],  # noqa: B006
    rounds: int = 8,
) -> list[dict[str, Any]]:
    """p50/p95 of one event's publish, per mechanism, queue type and fan-out, interleaved:
    every round runs a chunk of each variant, in a rotating order."""
    admin = connect(url)
    channel = admin.channel()
    variants: list[tuple[str, str, int]] = [
        (mechanism, kind, n)
        for n in (1, 10, 100)
        for kind in kinds
        for mechanism in mechanisms
    ]
    publishers: dict[tuple[str, str, int], Publisher] = {}
    for mechanism, kind, n in variants:
        names = declare(channel, kind, n)
        publishers[(mechanism, kind, n)] = Publisher(url, mechanism, kind, names)
    samples: dict[tuple[str, str, int], list[float]] = {v: [] for v in variants}
    rounds = 2 if smoke else rounds
    body = json.dumps({"id": "x" * 32, "name": "spike", "data": {"user_id": 7}}).encode()
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for variant in order:
            mechanism, kind, n = variant
            publisher = publishers[variant]
            ops = 3 if smoke else max(5, 300 // n if mechanism in ("per-queue",) else 600 // n)
            ops = min(ops, 40)
            for _ in range(ops):
                started = time.perf_counter()
                publisher.publish(body)
                samples[variant].append((time.perf_counter() - started) * 1e3)
            purge(channel, publisher.names)
            if publisher.returned:
                raise RuntimeError(f"{variant}: {len(publisher.returned)} returned messages")
    rows = []
    for variant in variants:
        mechanism, kind, n = variant
        values = samples[variant]
        rows.append(dict(mechanism=mechanism, kind=kind, n=n, samples=len(values),
                         p50=statistics.median(values), p95=percentile(values, 0.95)))
        publishers[variant].close()
    admin.close()
    return rows


def raw_send_task(url: str, smoke: bool) -> dict[str, Any]:
    """One raw Celery ``send_task`` with publisher confirms, p50/p95 in ms."""
    from celery import Celery

    app = Celery("spike-raw", broker=url)
    app.conf.broker_transport_options = {"confirm_publish": True}
    envelope = {"id": "x" * 32, "name": "spike", "data": {"user_id": 7}}
    values: list[float] = []
    for i in range(20 + (10 if smoke else 400)):
        started = time.perf_counter()
        app.send_task("spike.handle", args=[envelope], kwargs={}, queue="spike.raw")
        if i >= 20:  # the first ones declare the queue and connect
            values.append((time.perf_counter() - started) * 1e3)
    with app.connection_for_write() as connection:
        connection.default_channel.queue_purge("spike.raw")
    return dict(samples=len(values), p50=statistics.median(values), p95=percentile(values, 0.95))


def child(url: str, mechanism: str, kind: str, n: int) -> None:
    """Publish events 0, 1, 2, ... to the N queues until killed."""
    publisher = Publisher(url, mechanism, kind, queue_names(kind, n))
    print("ready", flush=True)
    i = 0
    while True:
        publisher.publish(json.dumps({"event": i}).encode())
        i += 1


def drain(channel: Any, name: str) -> list[int]:
    events = []
    while True:
        message = channel.basic_get(name, no_ack=True)
        if message is None:
            return events
        events.append(json.loads(message.body)["event"])


def atomicity(url: str, mechanism: str, kind: str, kills: int, n: int = 10) -> dict[str, Any]:
    """SIGKILL a publisher at a random moment ``kills`` times; count partial events."""
    admin = connect(url)
    channel = admin.channel()
    names = declare(channel, kind, n)
    purge(channel, names)
    partial = events = 0
    rng = random.Random(f"{mechanism}-{kind}")
    for _ in range(kills):
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.amqp_spike", "--child", mechanism, kind, str(n), url],
            stdout=subprocess.PIPE,
        )
        assert process.stdout is not None
        if process.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"the publisher child did not start ({mechanism}, {kind})")
        time.sleep(rng.uniform(0.02, 0.3))
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        process.stdout.close()
        # The broker handles what the socket delivered; give it the time to route it.
        counts: dict[int, int] = {}
        time.sleep(0.2)
        for name in names:
            for event in drain(channel, name):
                counts[event] = counts.get(event, 0) + 1
        events += len(counts)
        partial += sum(1 for c in counts.values() if c != n)
    admin.close()
    return dict(mechanism=mechanism, kind=kind, kills=kills, events=events, partial=partial)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.amqp_spike")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--child", nargs=4, metavar=("MECHANISM", "KIND", "N", "URL"))
    parser.add_argument("--only", default="latency,atomicity,raw")
    parser.add_argument("--url", help="an existing RabbitMQ node instead of a private one")
    parser.add_argument("--mechanisms", default=",".join(MECHANISMS))
    parser.add_argument("--kinds", default="classic,quorum")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)
    if args.child:
        mechanism, kind, n, url = args.child
        child(url, mechanism, kind, int(n))
        return 0
    from tests.harness import RabbitMQServer, rabbitmq_server_binary

    server = None
    url = args.url
    if url is None:
        binary = rabbitmq_server_binary()
        if binary is None:
            raise SystemExit("rabbitmq-server is not installed (apt-get install rabbitmq-server).")
        server = RabbitMQServer(binary)
        server.start()
        url = server.url
    try:
        print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        only = args.only.split(",")
        if "raw" in only:
            raw = raw_send_task(url, args.smoke)
            print(f"raw send_task, confirms: p50 {raw['p50']:.2f} ms, p95 {raw['p95']:.2f} ms"
                  f" ({raw['samples']} samples)", flush=True)
        if "latency" in only:
            print("\n| mechanism | queues | N | p50 ms | p95 ms | samples |")
            print("| --- | --- | --- | --- | --- | --- |")
            rows = latency(url, args.smoke, args.mechanisms.split(","), args.kinds.split(","),
                           args.rounds)
            for row in rows:
                print(f"| {row['mechanism']} | {row['kind']} | {row['n']} | {row['p50']:.2f}"
                      f" | {row['p95']:.2f} | {row['samples']} |", flush=True)
        if "atomicity" in only:
            kills = 3 if args.smoke else 40
            print("\n| mechanism | queues | kills | events seen | partial |")
            print("| --- | --- | --- | --- | --- |")
            for mechanism in MECHANISMS:
                for kind in ("classic", "quorum"):
                    if mechanism in ("per-queue", "window") and kind == "quorum" and not args.smoke:
                        continue  # the queue type cannot make separate publishes atomic
                    row = atomicity(url, mechanism, kind, kills)
                    print(f"| {row['mechanism']} | {row['kind']} | {row['kills']} | {row['events']}"
                          f" | {row['partial']} |", flush=True)
        print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
