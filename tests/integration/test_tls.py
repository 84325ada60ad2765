"""The bus reaches a TLS Redis with whatever TLS configuration the app's kombu connection takes.

A real redis-server with TLS on (and client certificates required), certificates made with
`openssl` for 127.0.0.1, real workers and publishers. Before, the bus's own Redis clients
ignored ``broker_use_ssl`` and refused kombu's ``ssl_cert_reqs=CERT_REQUIRED`` spelling.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from celery import Celery

from celery_events import ConfigurationError, EventBus
from celery_events.backends.redis.client import connect, connect_async
from celery_events.registry import Subscription

from ..harness import Worker, free_port, redis_server_binary, wait_until
from .conftest import effect_counts

SERVICE = "tests.services.checked"


class Certificates:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made by openssl."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = directory / "ca.crt"
        self.server_cert, self.server_key = directory / "server.crt", directory / "server.key"
        self.client_cert, self.client_key = directory / "client.crt", directory / "client.key"
        self._run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                  "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=celery-events test CA")
        (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        for name, extra in (("server", ["-extfile", "server.ext"]), ("client", [])):
            self._run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                      "-out", f"{name}.csr", "-subj", f"/CN={name}")
            self._run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                      "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", *extra)

    def _run(self, *args: str) -> None:
        subprocess.run(["openssl", *args], cwd=self.dir, check=True, capture_output=True)

    def use_ssl(self, cert_reqs: object = "required") -> dict[str, object]:
        """A ``broker_use_ssl`` dict as Celery's docs write it."""
        return {
            "ssl_cert_reqs": cert_reqs,
            "ssl_ca_certs": str(self.ca),
            "ssl_certfile": str(self.client_cert),
            "ssl_keyfile": str(self.client_key),
        }

    def query(self, cert_reqs: str) -> str:
        """The same options as a URL query, in kombu's spelling."""
        return "&".join(
            f"{key}={quote(str(value), safe='')}" for key, value in self.use_ssl(cert_reqs).items()
        )


class TlsRedis:
    """A redis-server that speaks TLS only, and wants a client certificate."""

    def __init__(self, binary: str, certificates: Certificates) -> None:
        self.port = free_port()
        self.certificates = certificates
        self.process = subprocess.Popen(
            [
                binary, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
                "--tls-cert-file", str(certificates.server_cert),
                "--tls-key-file", str(certificates.server_key),
                "--tls-ca-cert-file", str(certificates.ca),
                "--tls-auth-clients", "yes",
                "--save", "", "--appendonly", "no", "--dir", str(certificates.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._ping, timeout=10, what="the TLS redis-server")

    def url(self, scheme: str = "rediss", query: str = "") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/0" + (f"?{query}" if query else "")

    def client(self) -> redis.Redis:
        c = self.certificates
        return redis.Redis(
            host="127.0.0.1", port=self.port, ssl=True, ssl_ca_certs=str(c.ca),
            ssl_certfile=str(c.client_cert), ssl_keyfile=str(c.client_key), socket_timeout=5,
        )

    def _ping(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[TlsRedis]:
    binary = redis_server_binary()
    if binary is None or shutil.which("openssl") is None:
        pytest.skip("redis-server and openssl are needed (scripts/system-packages)")
    directory = Path(tempfile.mkdtemp(prefix="celery-events-tls-"))
    server = TlsRedis(binary, Certificates(directory))
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(autouse=True)
def _empty(tls_redis: TlsRedis) -> None:
    tls_redis.client().flushall()


@pytest.mark.parametrize(
    "cert_reqs", ["CERT_REQUIRED", "required", "CERT_OPTIONAL", "optional", "CERT_NONE", "none"]
)
def test_every_spelling_kombu_takes_in_the_url_connects(tls_redis: TlsRedis, cert_reqs: str) -> None:
    url = tls_redis.url(query=tls_redis.certificates.query(cert_reqs))
    assert connect(url, 5.0).ping()


@pytest.mark.parametrize("scheme", ["rediss", "redis"])
@pytest.mark.parametrize("cert_reqs", [ssl.CERT_REQUIRED, "CERT_REQUIRED", "required"])
def test_broker_use_ssl_as_kombu_takes_it_connects(
    tls_redis: TlsRedis, scheme: str, cert_reqs: object
) -> None:
    # (kombu turns TLS on for a broker_use_ssl dict even with a redis:// URL)
    use_ssl = tls_redis.certificates.use_ssl(cert_reqs)
    assert connect(tls_redis.url(scheme), 5.0, use_ssl=use_ssl).ping()


def test_the_server_certificate_is_verified_when_asked(tls_redis: TlsRedis, tmp_path: Path) -> None:
    # Given a CA file that did not sign the server's certificate
    other = Certificates(tmp_path)
    use_ssl = {**tls_redis.certificates.use_ssl("required"), "ssl_ca_certs": str(other.ca)}
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        connect(tls_redis.url(), 5.0, use_ssl=use_ssl).ping()


def test_a_misspelled_cert_reqs_is_refused_with_the_spellings(tls_redis: TlsRedis) -> None:
    with pytest.raises(ConfigurationError, match="CERT_REQUIRED, required"):
        connect(tls_redis.url(query="ssl_cert_reqs=always"), 5.0)


def test_a_registry_on_its_own_tls_url_is_written_and_read(
    tls_redis: TlsRedis, redis_url: str
) -> None:
    # Given a plain Redis broker and a registry behind TLS, spelled in the registry's URL
    url = tls_redis.url(query=tls_redis.certificates.query("CERT_REQUIRED"))
    bus = EventBus(Celery("orders", broker=redis_url), service="orders", registry_url=url)
    try:
        bus.registry.register("orders", [Subscription("user.*", "orders", "orders.a", "events.orders")])
        assert [s.handler for s in bus.registry.subscriptions()] == ["orders.a"]
    finally:
        bus.close()
    assert tls_redis.client().exists("celery_events:registry:orders")


def tls_app(url: str, use_ssl: dict[str, object] | None) -> Celery:
    app = Celery("shop", broker=url)
    if use_ssl is not None:
        app.conf.broker_use_ssl = use_ssl
    return app


@pytest.mark.parametrize("spelling", ["broker_use_ssl", "url", "broker_use_ssl on redis://"])
def test_a_worker_and_a_publisher_over_tls_deliver(
    tls_redis: TlsRedis, start_worker: Callable[..., Worker], redis_client: redis.Redis,
    spelling: str,
) -> None:
    certificates = tls_redis.certificates
    if spelling == "url":
        url, use_ssl = tls_redis.url(query=certificates.query("CERT_REQUIRED")), None
    elif spelling == "broker_use_ssl":
        url, use_ssl = tls_redis.url(), certificates.use_ssl("required")
    else:
        url, use_ssl = tls_redis.url("redis"), certificates.use_ssl("optional")
    # Given a subscriber's worker on the TLS broker (its effects go to the plain test Redis)
    env = {"CHECKED_BROKER": url}
    if use_ssl is not None:
        env["CHECKED_BROKER_USE_SSL"] = json.dumps(use_ssl)
    worker = start_worker(SERVICE, env=env)
    assert "the worker cannot start" not in worker.log()
    # When a publisher configured the same way publishes
    bus = EventBus(tls_app(url, use_ssl), service="shop")
    try:
        result = bus.publish("user.registered", {"user_id": 1})
    finally:
        bus.close()
    # Then the delivery is handled
    assert [d.handler for d in result.deliveries] == ["checked.greet"]
    wait_until(lambda: effect_counts(redis_client)[("checked.greet", result.event.id)] == 1)


def test_queue_status_reads_a_tls_broker_configured_by_broker_use_ssl(tls_redis: TlsRedis) -> None:
    from celery_events.backends.redis.queues import BrokerQueues

    app = tls_app(tls_redis.url(), tls_redis.certificates.use_ssl("required"))
    tls_redis.client().lpush("events.orders", "x", "y")
    assert BrokerQueues.from_app(app).waiting("events.orders")[0] == 2


@pytest.mark.parametrize("spelling", ["broker_use_ssl", "url"])
def test_apublish_connects_over_tls_as_the_blocking_client_does(
    tls_redis: TlsRedis, spelling: str
) -> None:
    # Given a bus on the TLS broker, its options spelled either way kombu takes them
    certificates = tls_redis.certificates
    if spelling == "url":
        app = tls_app(tls_redis.url(query=certificates.query("CERT_REQUIRED")), None)
    else:
        app = tls_app(tls_redis.url(), certificates.use_ssl("CERT_REQUIRED"))
    bus = EventBus(app, service="shop")
    bus.registry.register("orders", [Subscription("user.*", "orders", "orders.a", "events.orders")])

    # When a coroutine apublishes (through the loop's own redis.asyncio client)
    async def main() -> int:
        result = await bus.apublish("user.registered", {"user_id": 1})
        await bus.aclose()
        return len(result.deliveries)

    # Then the delivery is on the TLS broker
    assert asyncio.run(main()) == 1
    assert tls_redis.client().llen("events.orders") == 1


def test_the_asyncio_client_verifies_the_server_certificate(
    tls_redis: TlsRedis, tmp_path: Path
) -> None:
    other = Certificates(tmp_path)
    use_ssl = {**tls_redis.certificates.use_ssl("required"), "ssl_ca_certs": str(other.ca)}
    client = connect_async(tls_redis.url(), 5.0, use_ssl=use_ssl)
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        asyncio.run(client.ping())
