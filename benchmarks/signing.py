"""Signed events: what signing costs a publish, and what checking costs a worker (issue 13).

- Publish: one bus signs with Ed25519 (``signing_key``), one does not; both publish the same
  event to ten subscribing services (ten queues, not consumed), taking turns in short chunks
  within each repeat (as benchmarks/publish.py does). Target: signed ÷ unsigned ≤ 1.2× (one
  signature per event, not per delivery).
- Throughput: one worker process (``-c 1 -E``, as benchmarks/workers.py) drains a full queue
  of unsigned deliveries with signing off, and of signed deliveries with ``trusted_keys`` set
  (every delivery verified before the inbox), the two alternating. Target: ≥ 0.9×.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import redis
from celery import Celery

from celery_events import EventBus
from celery_events.trust.keys import generate_ed25519, generate_hmac

from ._stats import Section, Series, Target, interleaved, ratios
from .publish import publish_to_ten
from .workers import SUBSCRIPTIONS, drain_queued

DATA = {"user_id": 7, "email": "someone@example.com", "plan": "pro"}


def _keys(directory: Path, service: str) -> tuple[Path, Path]:
    """``service``'s private key file, and a trusted directory holding its public key."""
    private, public = generate_ed25519()
    key = directory / f"{service}.k1.key"
    key.write_bytes(private)
    trusted = directory / "trusted"
    trusted.mkdir(exist_ok=True)
    (trusted / f"{service}.k1.pub").write_bytes(public)
    return key, trusted


def publish(url: str, client: redis.Redis, smoke: bool) -> list[Section]:
    with tempfile.TemporaryDirectory() as tmp:
        key, _ = _keys(Path(tmp), "signer")
        secret = Path(tmp) / "hsigner.k1.hmac"
        secret.write_bytes(generate_hmac())
        buses = {}
        for label, name, settings in (
            ("publish to 10, unsigned", "plain", {}),
            ("publish to 10, Ed25519-signed", "signer", {"signing_key": str(key)}),
            ("publish to 10, HMAC-SHA256-signed", "hsigner", {"signing_key": str(secret)}),
        ):
            app = Celery(f"bench-{name}", broker=url)
            app.conf.task_send_sent_event = False
            buses[label] = EventBus(app, service=name, **settings)
        results = publish_to_ten(client, buses, "bench.ten", DATA, "s", smoke)
    plain, signed = results["publish to 10, unsigned"], results["publish to 10, Ed25519-signed"]
    section = Section(
        title="Publish to 10 subscribers, signed and unsigned",
        setup=(
            "Time per published event, queues not consumed, task-sent events off; the signed"
            " bus makes one Ed25519 signature per event (`signing_key`)."
        ),
        figures=[Series(name, "µs", results[name]) for name in results]
        + [Series("signing cost per event", "µs", [s - p for s, p in zip(signed, plain, strict=True)])],
    )
    ratio = Series("signed publish to 10 ÷ unsigned", "×", ratios(signed, plain))
    section.targets = [Target("13a. " + ratio.name, ratio, "≤ 1.2×", ratio.median <= 1.2)]
    # For teams with a shared secret: the same publish, signed with HMAC-SHA256 (no target).
    hmac_ratio = Series(
        "HMAC-signed publish to 10 ÷ unsigned", "×",
        ratios(results["publish to 10, HMAC-SHA256-signed"], plain),
    )
    section.figures.append(hmac_ratio)
    return [section]


def throughput(url: str, client: redis.Redis, smoke: bool) -> list[Section]:
    count = 200 if smoke else 3000
    with tempfile.TemporaryDirectory() as tmp:
        key, trusted = _keys(Path(tmp), "feeder")
        feeders = {}
        for name, settings in (("plain", {}), ("signed", {"signing_key": str(key)})):
            app = Celery(f"bench-feeder-{name}", broker=url)
            app.conf.task_send_sent_event = True
            feeders[name] = EventBus(app, service="feeder", **settings)
        feeders["plain"].registry.register("bench", SUBSCRIPTIONS)

        def variant(feeder: EventBus, env: dict[str, str]) -> Callable[[], float]:
            def fill() -> None:
                for i in range(count):
                    feeder.publish("bench.drain", {**DATA, "n": i})

            return lambda: drain_queued(url, client, count, fill, env=env)

        results = interleaved(
            {
                "deliveries, signing off": variant(feeders["plain"], {}),
                "signed deliveries, verified": variant(
                    feeders["signed"], {"BENCH_TRUSTED": str(trusted)}
                ),
            },
            # One drain's rate varies by ±15 % here: five of each for a median that holds.
            repeats=1 if smoke else 5,
        )
        for bus in feeders.values():
            bus.close()
    plain, verified = results["deliveries, signing off"], results["signed deliveries, verified"]
    section = Section(
        title=f"Worker throughput with signature checks, {count:,} queued",
        setup=(
            "Tasks per second of one worker process (`-c 1 -E`, prefork) draining a full queue;"
            " with `trusted_keys` set every delivery's Ed25519 signature is checked before the"
            " inbox."
        ),
        figures=[Series(name, "tasks/s", values) for name, values in results.items()],
    )
    ratio = Series("verified ÷ signing off", "×", ratios(verified, plain))
    section.targets = [Target("13b. " + ratio.name, ratio, "≥ 0.9×", ratio.median >= 0.9)]
    return [section]
