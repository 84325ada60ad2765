"""Sentinel URLs and the WAIT settings, read without a server."""

from __future__ import annotations

import pytest

from celery_events.backends import capabilities_of, first_broker_url, without_password
from celery_events.backends.redis import CAPABILITIES as REDIS_CAPABILITIES
from celery_events.backends.redis.client import connect, is_sentinel_url
from celery_events.errors import ConfigurationError
from celery_events.settings import Settings

SENTINELS = "sentinel://:secret@127.0.0.1:26379/2;sentinel://127.0.0.1:26380"


def test_sentinel_is_the_redis_backend_with_every_redis_capability() -> None:
    assert capabilities_of("sentinel") == REDIS_CAPABILITIES


def test_a_sentinel_broker_url_is_kept_whole_with_every_sentinel() -> None:
    assert first_broker_url(SENTINELS) == SENTINELS
    assert first_broker_url(SENTINELS.split(";")) == SENTINELS
    # A Redis fail-over list is still its first URL.
    assert first_broker_url("redis://a:6379/0;redis://b:6379/0") == "redis://a:6379/0"
    assert without_password(SENTINELS) == (
        "sentinel://:***@127.0.0.1:26379/2;sentinel://127.0.0.1:26380"
    )
    assert is_sentinel_url(SENTINELS) and not is_sentinel_url("redis://127.0.0.1/0")


def test_the_client_reads_the_url_as_kombu_does() -> None:
    client = connect(SENTINELS, 2.0, transport_options={"master_name": "mymaster"})
    pool = client.connection_pool
    assert pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["password"] == "secret"
    assert pool.connection_kwargs["socket_timeout"] == 2.0
    addresses = [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
        for s in pool.sentinel_manager.sentinels
    ]
    assert addresses == [("127.0.0.1", 26379), ("127.0.0.1", 26380)]
    # The sentinels get the timeouts, not the primary's password (as kombu and redis-py do).
    assert "password" not in pool.sentinel_manager.sentinel_kwargs


def test_sentinel_kwargs_and_tls_reach_their_connections() -> None:
    client = connect(
        "sentinel://127.0.0.1:26379",
        2.0,
        use_ssl={"ssl_cert_reqs": "required", "ssl_ca_certs": "/tmp/ca.pem"},
        transport_options={"master_name": "m", "sentinel_kwargs": {"password": "s3"}},
    )
    pool = client.connection_pool
    assert pool.sentinel_manager.sentinel_kwargs["password"] == "s3"
    assert pool.connection_kwargs["ssl_ca_certs"] == "/tmp/ca.pem"
    assert pool.connection_class.__name__ == "SentinelManagedSSLConnection"


def test_a_registry_url_names_its_primary_in_its_query() -> None:
    client = connect("sentinel://127.0.0.1:26379?master_name=reg", 2.0)
    assert client.connection_pool.service_name == "reg"


def test_a_sentinel_url_without_master_name_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="names no primary.*master_name"):
        connect("sentinel://:pw@127.0.0.1:26379", 2.0)


def test_registry_url_accepts_sentinel() -> None:
    url = "sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380?master_name=mymaster"
    assert Settings.from_options({"registry_url": url}).registry_url == url


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"wait_for_replicas": -1}, "wait_for_replicas must be a whole number >= 0"),
        ({"wait_for_replicas": 1.5}, "wait_for_replicas must be a whole number"),
        ({"wait_for_replicas": True}, "wait_for_replicas must be a whole number"),
        ({"wait_for_replicas_timeout": 0}, "wait_for_replicas_timeout must be a finite"),
        (
            {"wait_for_replicas": 1, "wait_for_replicas_timeout": 5.0, "publish_timeout": 5.0},
            "wait_for_replicas_timeout .* must be shorter than publish_timeout",
        ),
    ],
)
def test_bad_wait_settings_are_refused(options: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Settings.from_options(options)


def test_wait_is_off_by_default() -> None:
    assert Settings().wait_for_replicas == 0
