"""The pure parts of the RabbitMQ registry store and queue reader."""

from __future__ import annotations

from typing import Any

import pytest

from celery_events import ConfigurationError, Settings
from celery_events.backends.amqp.registry import AmqpRegistry, stream_name
from celery_events.backends.amqp.status import AmqpQueues, default_management_url, vhost_of


@pytest.mark.parametrize(
    ("prefix", "name"),
    [("celery_events:", "celery_events.registry"), ("shop", "shop.registry"), (":", "celery_events.registry")],
)
def test_the_stream_is_named_from_the_key_prefix(prefix: str, name: str) -> None:
    assert stream_name(prefix) == name


@pytest.mark.parametrize(
    ("url", "vhost"),
    [
        ("amqp://guest:guest@localhost//", "/"),
        ("amqp://guest:guest@localhost/", "/"),
        ("amqp://guest:guest@localhost", "/"),
        ("amqp://u:p@host:5672/shop", "shop"),
        ("amqp://u:p@host:5672/%2Fshop", "/shop"),
    ],
)
def test_the_vhost_is_read_from_the_broker_url(url: str, vhost: str) -> None:
    assert vhost_of(url) == vhost


def test_the_default_management_url_is_the_brokers_host_and_user() -> None:
    assert default_management_url("amqp://app:s%40cret@rabbit.internal:5672//") == (
        "http://app:s%40cret@rabbit.internal:15672"
    )
    assert default_management_url("amqps://rabbit//") == "https://guest:guest@rabbit:15672"
    assert default_management_url("amqp://[::1]:5672//").startswith("http://guest:guest@[::1]:")


def test_the_reader_hides_the_password_and_sends_basic_auth() -> None:
    queues = AmqpQueues("amqp://localhost//", "http://app:s%40cret@rabbit:15672/")
    assert queues.management_url == "http://app:***@rabbit:15672/"
    assert queues.api == "http://rabbit:15672"
    assert queues._auth == "Basic YXBwOnNAY3JldA=="  # app:s@cret


@pytest.mark.parametrize("url", ["amqp://rabbit:15672", "rabbit:15672", 15672, "http://"])
def test_a_bad_management_url_is_refused(url: object) -> None:
    with pytest.raises(ConfigurationError, match="management_url"):
        Settings.from_options({"management_url": url})


def test_a_management_url_is_accepted() -> None:
    url = "https://monitor:pw@rabbit:15671"
    assert Settings.from_options({"management_url": url}).management_url == url
    assert Settings.from_options({}).management_url is None


class _Channel:
    def __init__(self) -> None:
        self.acked: list[int] = []

    def basic_ack(self, tag: int) -> None:
        self.acked.append(tag)


class _Message:
    """What py-amqp hands a stream consumer: headers with the offset, a body, a channel."""

    def __init__(self, channel: _Channel, offset: int, body: bytes, **headers: Any) -> None:
        self.channel = channel
        self.delivery_tag = offset + 100
        self.body = body
        self.headers = {"x-stream-offset": offset, **headers}


def test_the_last_message_of_a_service_wins_and_a_tombstone_removes_it() -> None:
    store = AmqpRegistry("amqp://localhost//")
    channel = _Channel()
    for message in [
        _Message(channel, 0, b"", kind="hello"),
        _Message(channel, 1, b"v1", kind="record", service="orders"),
        _Message(channel, 2, b"b1", kind="record", service=b"billing"),
        _Message(channel, 3, b"v2", kind="record", service="orders"),
        _Message(channel, 4, b"", kind="removed", service="billing"),
        _Message(channel, 5, b"1.5", kind="published", field="orders user.registered"),
        _Message(channel, 6, b"?", kind="a-later-kind"),
        # A message read again after a reconnection changes nothing.
        _Message(channel, 3, b"stale", kind="record", service="orders"),
    ]:
        store._on_message(message)
    assert store._records == {b"orders": b"v2"}
    assert store._published == {"orders user.registered": "1.5"}
    assert store._applied == 6
    assert channel.acked == [100, 101, 102, 103, 104, 105, 106, 103]


def _snapshot(upto: int, records: dict[str, bytes], published: dict[str, str]) -> bytes:
    import base64
    import json

    return json.dumps(
        {
            "upto": upto,
            "records": {k: base64.b64encode(v).decode() for k, v in records.items()},
            "published": published,
        }
    ).encode()


def test_a_store_starting_mid_stream_takes_the_snapshot_and_what_came_while_it_was_made() -> None:
    store = AmqpRegistry("amqp://localhost//")
    # It started after the snapshot's upto (9): what it reads first is incomplete.
    store._start, store._complete = 10, False
    channel = _Channel()
    for message in [
        # Written while the snapshot was being made: after its upto, before it.
        _Message(channel, 10, b"new", kind="record", service="orders"),
        _Message(channel, 11, b"", kind="removed", service="billing"),
        _Message(
            channel,
            12,
            _snapshot(9, {"orders": b"old", "billing": b"b", "shipping": b"s"}, {"f": "1"}),
            kind="snapshot",
        ),
        _Message(channel, 13, b"s2", kind="record", service="shipping", snapshot=9),
    ]:
        store._on_message(message)
    assert store._complete
    assert store._records == {b"orders": b"new", b"shipping": b"s2"}
    assert store._published == {"f": "1"}
    assert store._snapshot_upto == 9
    assert store._pending == []


def test_a_complete_store_ignores_snapshots_and_a_lost_beginning_makes_it_incomplete() -> None:
    store = AmqpRegistry("amqp://localhost//")
    channel = _Channel()
    store._on_message(_Message(channel, 0, b"", kind="hello"))
    store._on_message(_Message(channel, 1, b"v", kind="record", service="orders"))
    store._on_message(_Message(channel, 3, _snapshot(0, {}, {}), kind="snapshot"))
    assert store._records == {b"orders": b"v"} and store._complete
    assert store._snapshot_upto == 0

    truncated = AmqpRegistry("amqp://localhost//")
    truncated._on_message(_Message(channel, 5000, b"v", kind="record", service="orders"))
    assert not truncated._complete
    truncated._on_message(_Message(channel, 5001, b"{not json", kind="snapshot"))
    assert not truncated._complete  # an unreadable snapshot completes nothing


@pytest.mark.parametrize(
    "broker",
    [
        "amqp://app:pw@rabbit1//;amqp://app:pw@rabbit2:5673//",
        ["amqp://app:pw@rabbit1//", "amqp://app:pw@rabbit2:5673//"],
    ],
)
def test_a_cluster_brokers_reader_reads_each_node_in_turn(broker: object) -> None:
    from celery import Celery

    queues = AmqpQueues.from_app(Celery("orders", broker=broker), None, 1.0)
    assert queues.nodes == ["amqp://app:pw@rabbit1//", "amqp://app:pw@rabbit2:5673//"]
    assert queues.management_url == "http://app:***@rabbit1:15672;http://app:***@rabbit2:15672"
    assert queues.vhost == "/"


def test_several_management_urls_are_accepted() -> None:
    urls = "http://monitor:pw@rabbit1:15672; http://monitor:pw@rabbit2:15672"
    assert Settings.from_options({"management_url": urls}).management_url == urls
    with pytest.raises(ConfigurationError, match="management_url"):
        Settings.from_options({"management_url": "http://rabbit1:15672;rabbit2:15672"})
    with pytest.raises(ConfigurationError, match="management_url"):
        Settings.from_options({"management_url": " ; "})


def test_nodes_of_one_host_ask_its_management_api_once_and_none_is_refused() -> None:
    from celery import Celery

    app = Celery("orders", broker="amqp://rabbit:5672//;amqp://rabbit:5673//")
    assert AmqpQueues.from_app(app, None, 1.0).management_url == "http://guest:***@rabbit:15672"
    with pytest.raises(ConfigurationError, match="names no URL"):
        AmqpQueues("amqp://rabbit//", " ; ")
