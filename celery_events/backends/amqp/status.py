"""Reading RabbitMQ's queues without consuming (``celery eventbus status``).

What RabbitMQ 3.10 tells, and where:

- *waiting*: a passive ``queue.declare`` over AMQP answers the queue's ready messages
  (``message_count``) at once, for every queue type; a queue not declared yet waits nothing;
- *in flight*: the management plugin's HTTP API (``GET /api/queues/{vhost}``) gives each
  queue's ``messages_unacknowledged`` (delivered to a consumer, not acked yet). AMQP has no
  way to ask;
- *oldest waiting*: for classic queues the API gives ``head_message_timestamp``, the AMQP
  ``timestamp`` property (whole seconds) of the message at the head, when publishers set it;
  the age is now minus that (measured on 3.10: the head may be a message delivered and not
  acked yet, so the age is that of the oldest message not acked). Quorum queues do not report it in 3.10 (rabbitmq-server#6813):
  their ``oldest_entry_timestamp`` is an internal Ra command, and ``rabbitmq-queues peek``
  runs on a node with its Erlang cookie only. Reading the head with ``basic.get`` and
  requeueing it would raise its ``x-delivery-count`` (measured: 0 then 1) and bring it closer
  to the delivery limit that dead-letters poison messages, so it is never done: the age of a
  quorum queue's oldest waiting delivery is None (unknown).

The management API's numbers are the broker's statistics, refreshed every
``collect_statistics_interval`` (5 s by default): in flight and the head timestamp may be
that old. When the API cannot be reached, the reader raises
:class:`~celery_events.errors.BrokerError` saying so (``status`` exits as for an unreachable
broker).

A broker URL that lists the nodes of a cluster (``amqp://rabbit1//;amqp://rabbit2//``) is read
as kombu reads it: the counts from the first node that answers, the management API of each
node in turn (its host, port 15672, unless ``management_url`` says where, one URL or several
joined by ``;``) until one answers. Any node's queue statistics cover the whole cluster.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ...errors import BrokerError, ConfigurationError, describe
from .. import without_password

__all__ = ["AmqpQueues", "default_management_url", "vhost_of"]

#: The management plugin's default port.
MANAGEMENT_PORT = 15672


def vhost_of(broker_url: str) -> str:
    """The virtual host a broker URL names (``amqp://h//`` and ``amqp://h/`` are ``/``)."""
    path = urllib.parse.urlsplit(broker_url).path
    vhost = path[1:] if path.startswith("/") else path
    return urllib.parse.unquote(vhost) or "/"


def default_management_url(broker_url: str) -> str:
    """The management API next to a broker: its host, port 15672, its user and password
    (``amqps://`` brokers get ``https://``)."""
    parts = urllib.parse.urlsplit(broker_url)
    scheme = "https" if parts.scheme == "amqps" else "http"
    user = urllib.parse.unquote(parts.username) if parts.username else "guest"
    password = urllib.parse.unquote(parts.password) if parts.password else "guest"
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    credentials = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
    return f"{scheme}://{credentials}@{host}:{MANAGEMENT_PORT}"


class AmqpQueues:
    """Reads RabbitMQ's queues over AMQP (counts) and the management API (in flight, age).

    >>> from kombu import Connection
    >>> from celery_events.backends.amqp.status import AmqpQueues
    >>> confirmed = {"confirm_publish": True}       # each put waits for the broker's confirm
    >>> with Connection("amqp://guest:guest@localhost//", transport_options=confirmed) as connection:
    ...     queue = connection.SimpleQueue("events.orders")
    ...     for n in range(3):
    ...         queue.put({"n": n})
    ...     queue.close()
    >>> queues = AmqpQueues("amqp://guest:guest@localhost//", "http://guest:guest@localhost:15672")
    >>> queues.waiting("events.orders")      # 3 waiting, and the oldest's age (None if unknown)
    (3, ...)
    """

    def __init__(
        self, broker_url: str, management_url: str, *, timeout: float = 5.0, ssl: Any = None
    ) -> None:
        self.broker_url = broker_url
        self.nodes = [piece.strip() for piece in broker_url.split(";") if piece.strip()]
        self.vhost = vhost_of(self.nodes[0] if self.nodes else broker_url)
        self.timeout = timeout
        self.ssl = ssl
        # Nodes on one host (other AMQP ports) share its default API: asked once.
        urls = dict.fromkeys(p.strip() for p in management_url.split(";") if p.strip())
        if not urls:
            raise ConfigurationError(
                "The RabbitMQ management_url names no URL: give the management API's, such as"
                " http://guest:guest@localhost:15672, or None for the broker's host."
            )
        self._apis = [_ManagementApi.parse(url) for url in urls]
        self._connection: Any = None
        self._queues: dict[str, dict[str, Any]] | None = None

    @property
    def api(self) -> str:
        """The management API tried first (the one that answered last)."""
        return self._apis[0].api

    @property
    def management_url(self) -> str:
        """The management API's URL (or URLs, joined by ``;``), the passwords hidden."""
        return ";".join(api.shown for api in self._apis)

    @property
    def _auth(self) -> str | None:
        return self._apis[0].auth

    @classmethod
    def from_app(cls, app: Any, management_url: str | None, timeout: float) -> AmqpQueues:
        """The reader of ``app``'s broker (every node its URL lists), with the management API
        at ``management_url`` (the ``management_url`` setting) or next to each node."""
        from .. import broker_url_of

        url = broker_url_of(app)
        listed = app.conf.broker_url
        if isinstance(listed, (list, tuple)):
            listed = ";".join(str(piece) for piece in listed)
        nodes = [p.strip() for p in str(listed or "").split(";") if p.strip()] or [url]
        return cls(
            ";".join(nodes),
            management_url or ";".join(default_management_url(node) for node in nodes),
            timeout=timeout,
            ssl=app.conf.broker_use_ssl,
        )

    def waiting(self, queue: str, now: float | None = None) -> tuple[int, float | None]:
        """Ready messages in ``queue`` and the age of the head one (classic queues only)."""
        count = self._ready(queue)
        if count == 0:
            return 0, None
        info = self._all_queues().get(queue, {})
        stamp = info.get("head_message_timestamp")
        if not isinstance(stamp, (int, float)) or isinstance(stamp, bool):
            return count, None
        now = time.time() if now is None else now
        return count, max(0.0, now - float(stamp))

    def in_flight(self) -> dict[str, int]:
        """Per queue, messages delivered to consumers and not acked (the API's statistics)."""
        return {
            name: int(info.get("messages_unacknowledged") or 0)
            for name, info in self._all_queues(fresh=True).items()
            if info.get("messages_unacknowledged")
        }

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.release()
            except Exception:  # already broken: nothing more to release
                pass

    # -- AMQP ------------------------------------------------------------------------------

    def _ready(self, queue: str) -> int:
        import amqp

        try:
            if self._connection is None:
                # kombu tries the nodes of the URL in turn, each for up to the timeout.
                connection = _kombu_connection()(
                    self.broker_url, connect_timeout=self.timeout, ssl=self.ssl
                )
                connection.ensure_connection(
                    max_retries=len(connection.alt) or 1,
                    timeout=self.timeout * max(1, len(connection.alt)),
                )
                self._connection = connection
            channel = self._connection.connection.channel()
            try:
                declared = channel.queue_declare(queue, passive=True)
            except amqp.exceptions.NotFound:
                # Its subscriber has not declared it yet; the broker closed the channel.
                return 0
            channel.close()
            return int(declared.message_count)
        except Exception as exc:  # kombu and py-amqp raise many kinds
            self.close()
            raise BrokerError(
                f"Could not read queue {queue!r} on the RabbitMQ broker"
                f" {without_password(self.broker_url)}: {describe(exc)}. Check that the broker is"
                " reachable."
            ) from exc

    # -- the management API ----------------------------------------------------------------

    def _all_queues(self, fresh: bool = False) -> dict[str, dict[str, Any]]:
        if self._queues is None or fresh:
            vhost = urllib.parse.quote(self.vhost, safe="")
            columns = "name,type,messages_ready,messages_unacknowledged,head_message_timestamp"
            listed = self._get(f"/api/queues/{vhost}?columns={columns}")
            if not isinstance(listed, list):
                answer = f"it answered {type(listed).__name__}, not a list of queues"
                raise self._unreadable([(self._apis[0], answer)])
            self._queues = {str(q.get("name")): q for q in listed if isinstance(q, dict)}
        return self._queues

    def _get(self, path: str) -> Any:
        """``path`` of the first management API that answers, tried in turn; that one is
        asked first next time."""
        failed: list[tuple[_ManagementApi, str]] = []
        for api in list(self._apis):
            try:
                found = api.get(path, self.timeout)
            except _Unanswered as exc:
                failed.append((api, exc.reason))
                continue
            if api is not self._apis[0]:
                self._apis.remove(api)
                self._apis.insert(0, api)
            return found
        raise self._unreadable(failed)

    def _unreadable(self, failed: list[tuple[_ManagementApi, str]]) -> BrokerError:
        if len(failed) == 1:
            where = f"at {failed[0][0].shown}: {failed[0][1]}"
        else:
            where = "on any node: " + "; ".join(f"{api.shown}: {why}" for api, why in failed)
        return BrokerError(
            f"Could not read the RabbitMQ management API {where}. It tells the deliveries in"
            " flight and the age of the oldest waiting one: enable the plugin (rabbitmq-plugins"
            " enable rabbitmq_management), or set management_url to where it listens."
        )


class _Unanswered(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _ManagementApi:
    """One node's management API: its base URL, its Basic credentials, how it is shown."""

    __slots__ = ("api", "auth", "shown")

    def __init__(self, api: str, auth: str | None, shown: str) -> None:
        self.api, self.auth, self.shown = api, auth, shown

    @classmethod
    def parse(cls, url: str) -> _ManagementApi:
        parts = urllib.parse.urlsplit(url)
        auth = None
        if parts.username is not None:
            pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            auth = "Basic " + base64.b64encode(pair.encode()).decode()
        netloc = parts.hostname or "localhost"
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port:
            netloc += f":{parts.port}"
        api = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        return cls(api, auth, without_password(url))

    def get(self, path: str, timeout: float) -> Any:
        request = urllib.request.Request(self.api + path, headers={"Accept": "application/json"})
        if self.auth is not None:
            request.add_header("Authorization", self.auth)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise _Unanswered(
                    f"it refused the user (HTTP {exc.code}); the user needs the monitoring tag"
                    " (rabbitmqctl set_user_tags <user> monitoring)"
                ) from exc
            raise _Unanswered(f"HTTP {exc.code} {exc.reason}") from exc
        except (OSError, ValueError) as exc:
            raise _Unanswered(describe(exc)) from exc


def _kombu_connection() -> Any:
    """kombu's Connection class (kombu's API is untyped; imported when first needed)."""
    from kombu.connection import Connection

    return Connection
