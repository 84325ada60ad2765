"""A three-node RabbitMQ cluster loses the node that leads an event queue mid-stream.

Two subscriber services (tests/services/fault_a.py, fault_b.py: quorum event queues, the
default) run one real worker each on the cluster, the broker URL naming all three nodes; the
registry, inboxes and effects are on Redis. The test publishes a steady stream of events, and
in the middle of it `kill -9`s the node that leads one of the event queues (RabbitMQ places a
leader on the node its declarer is connected to: the first of the URL, where the publisher and
the workers are connected too), then starts it again. Then:
publishing went on after a bounded pause (the longest gap between two publishes that returned;
printed), the node is back in the cluster, every event queue is still a quorum queue on three
members, and a checker finds 0 lost and 0 duplicated effects.

CLUSTER_RATE (events per second) and CLUSTER_SECONDS change the run.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from celery import Celery

from celery_events import EventBus, PublishError, PublishResult

from ...faults.checker import check
from ...harness import Worker, wait_until
from ...rabbitmq_cluster import RabbitMQCluster
from ..conftest import effects

RATE = float(os.environ.get("CLUSTER_RATE", "20"))
SECONDS = float(os.environ.get("CLUSTER_SECONDS", "30"))
SERVICES = ("fault_a", "fault_b")
#: What the test asserts of the longest publish pause (generous: a 2-core machine shared with
#: other tests; the printed number is the measure).
PAUSE_LIMIT = 30.0


@pytest.fixture
def cluster(
    rabbitmq_cluster: RabbitMQCluster, request: pytest.FixtureRequest
) -> Iterator[RabbitMQCluster]:
    """The session's cluster with every node running, its nodes' logs shown on failure."""
    for node in rabbitmq_cluster.nodes:
        if node.process is None:  # an earlier test failed before starting it again
            rabbitmq_cluster.restart(node)
    yield rabbitmq_cluster
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print(rabbitmq_cluster.logs())


def test_killing_the_leader_of_an_event_queue_mid_stream_loses_and_duplicates_nothing(
    cluster: RabbitMQCluster,
    redis_url: str,
    redis_client: redis.Redis,
    start_worker: Callable[..., Worker],
) -> None:
    # Given two services' workers on the cluster, their event queues quorum queues
    env = {"CELERY_EVENTS_TEST_BROKER": cluster.url, "CELERY_EVENTS_TEST_STATE": redis_url}
    for service in SERVICES:
        start_worker(f"tests.services.{service}", env=env, args=["-c", "2", "-n", f"{service}@%h"])
    publisher = EventBus(
        Celery("cluster_pub", broker=cluster.url), service="cluster_pub",
        registry_url=redis_url, publish_timeout=30.0,
    )
    event_queues = {
        name: row for name, row in cluster.queues().items()
        if name.startswith(tuple(f"events.{s}" for s in SERVICES))
    }
    assert event_queues, f"no event queue on the cluster: {sorted(cluster.queues())}"
    assert {row["type"] for row in event_queues.values()} == {"quorum"}, event_queues

    # When a stream of events is published, and the leader of an event queue is killed in the
    # middle of it, then started again
    published: list[PublishResult] = []
    returned: list[float] = []  # when each publish returned
    failures: list[str] = []  # PublishError: the bus said the event may not be sent
    untyped: list[str] = []  # anything else a publish raised: a bug of its own
    stop = threading.Event()

    def stream() -> None:
        n = 0
        while not stop.is_set():
            try:
                published.append(publisher.publish("fault.order.created", {"n": n}))
                returned.append(time.monotonic())
            except PublishError as error:
                failures.append(str(error))
            except Exception as error:  # counted and asserted below, the stream goes on
                untyped.append(repr(error))
            n += 1
            time.sleep(1 / RATE)

    thread = threading.Thread(target=stream, daemon=True)
    began = time.monotonic()
    thread.start()
    wait_until(lambda: time.monotonic() - began > SECONDS / 3, timeout=SECONDS, interval=0.2,
               what="the first third of the stream")
    victim_queue = sorted(event_queues)[0]
    victim = cluster.leader(victim_queue)
    killed_at = time.monotonic()
    cluster.kill(victim)
    # The queue elects another leader among the two live members.
    wait_until(lambda: cluster.leader(victim_queue) is not victim, timeout=30, interval=0.5,
               what=f"a new leader of {victim_queue}")
    elected = time.monotonic() - killed_at
    wait_until(lambda: time.monotonic() - killed_at > SECONDS / 3, timeout=SECONDS,
               interval=0.2, what="the second third of the stream")
    rejoin = cluster.restart(victim)
    # The stream goes on for its last third, and a few seconds past the node's return.
    until = max(began + SECONDS, time.monotonic() + 5)
    wait_until(lambda: time.monotonic() > until, timeout=SECONDS + 10, interval=0.2,
               what="the last third of the stream")
    stop.set()
    ended = time.monotonic()
    thread.join(timeout=60)
    assert not thread.is_alive()

    # Then every delivery is handled once, none lost, none twice
    expected = {(f"{s}.consume", result.event.id) for result in published for s in SERVICES}
    client = redis.Redis.from_url(redis_url)

    def settled() -> bool:
        seen = {(str(e["handler"]), str(e["event_id"])) for e in effects(client)}
        return expected <= seen and not any(cluster.messages().values())

    try:
        wait_until(settled, timeout=180, interval=1.0, what="every delivery handled and acked")
    except AssertionError:
        # Not settled: the verdict and the queues below say what is missing.
        waiting = {name: n for name, n in cluster.messages().items() if n}
        print(f"\nnot settled after 180 s; messages left in queues: {waiting}")
    ops = {
        s: EventBus(Celery(f"{s}-ops", broker=cluster.url), service=s, registry_url=redis_url)
        for s in SERVICES
    }
    dead = [(str(d.handler), str(d.event_id)) for bus in ops.values()
            for d in bus.dead_letters.list(limit=None)]
    for bus in ops.values():
        bus.close()
    publisher.close()
    seen = [(str(e["handler"]), str(e["event_id"])) for e in effects(client)]
    verdict = check(expected, set(), seen, dead)

    # The longest pause: between two publishes that returned, or from the last one to the
    # end of the stream (if publishing never came back).
    ends = [*returned, ended]
    gaps = [later - earlier for earlier, later in zip(ends, ends[1:], strict=False)]
    pause = max(gaps, default=0.0)
    print(
        f"\nthree-node cluster, kill -9 of {victim.nodename} (leader of {victim_queue}):"
        f" {len(published)} events at {RATE:.0f}/s, {len(failures)} publishes failed"
        f" ({len(untyped)} with an untyped error);"
        f" new leader after {elected:.1f} s; the node back in the cluster after {rejoin:.1f} s;"
        f" longest publish pause {pause:.2f} s (normal {1 / RATE:.2f} s); {verdict.summary()}"
    )
    assert cluster.running_nodes() == {node.nodename for node in cluster.nodes}
    for name, row in cluster.queues().items():
        if name in event_queues:
            assert row["type"] == "quorum" and len(row["members"]) == 3, (name, row)  # type: ignore[arg-type]
    assert untyped == []
    assert failures == []
    assert pause < PAUSE_LIMIT, f"publishing paused {pause:.1f} s"
    assert verdict.valid, verdict.summary()
