"""The bus's Redis clients, blocking and asyncio, name their library to Redis (CLIENT SETINFO,
which Redis 7.2 shows in CLIENT INFO) as redis-py does, without reading the package's metadata
for every new connection."""

from __future__ import annotations

import asyncio

import pytest
import redis

from celery_events.backends.redis import client as clients

pytest.importorskip("redis.driver_info", reason="redis-py < 8 reads its version once itself")


def test_new_connections_name_the_library_without_reading_its_metadata(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clients._driver_options()  # read once, as by the first client of a process

    def read_again() -> str:
        raise AssertionError("the package metadata was read for a new connection")

    monkeypatch.setattr("redis.utils.get_lib_version", read_again)
    blocking = clients.connect(redis_url, 5.0)
    try:
        assert blocking.ping()
        connection = blocking.connection_pool.get_connection()
        assert connection.driver_info.lib_version == redis.__version__
        blocking.connection_pool.release(connection)
    finally:
        blocking.close()

    async def connect() -> str:
        aio = clients.connect_async(redis_url, 5.0)
        try:
            assert await aio.ping()
            connection = await aio.connection_pool.get_connection()
            version: str = connection.driver_info.lib_version
            await aio.connection_pool.release(connection)
            return version
        finally:
            await aio.aclose()

    assert asyncio.run(connect()) == redis.__version__
