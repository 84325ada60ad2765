"""A transport through Celery's own producer, for brokers the bus has no backend of its own for.

Deliveries go through ``app.amqp.send_task_message`` one by one over one producer connection,
so signals and ``task-sent`` events are Celery's own; fan-out is not atomic there (a publisher
that dies mid-call leaves some deliveries sent). The memory backend (kombu's in-process
transport) publishes through it; Redis, Sentinel and RabbitMQ have transports of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._messages import TaskMessage
from ..errors import ConfigurationError, PublishError, describe
from .base import QueueReader, ServiceBus, send_each, send_in_thread

if TYPE_CHECKING:
    from .base import Outgoing

__all__ = ["KombuTransport"]


class KombuTransport:
    """Sends deliveries through Celery's producer (any kombu transport).

    Every message goes through ``app.amqp.send_task_message``, as ``send_task`` sends it, so
    signals and ``task-sent`` events are Celery's own. All of them go over one producer
    connection inside a kombu publish batch: transports that can defer publishes send them in
    one go, the others one by one.
    """

    # How many transport operations a batch buffers before it flushes.
    BATCH_SIZE = 1000
    records_catalog = False
    assigns_task_ids = False

    def __init__(self, app: Any, timeout: float, name: str = "sentinel") -> None:
        self.app = app
        self.timeout = timeout
        self.name = name

    def send(self, messages: Sequence[TaskMessage], catalog: tuple[str, str] | None) -> None:
        with self.app.producer_or_acquire() as producer:
            self._send_through(producer, messages)

    def _send_through(self, producer: Any, messages: Sequence[TaskMessage]) -> None:
        """Send ``messages`` through ``producer`` (Celery's), in one kombu publish batch."""
        send = self.app.amqp.send_task_message
        policy = {"max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 1}
        sent_events = bool(self.app.conf.task_send_sent_event)
        try:
            with producer.batch(self.BATCH_SIZE):
                for message in messages:
                    sent_event = message.sent_event() if sent_events else None
                    send(
                        producer,
                        message.task_name,
                        (message.headers, message.properties, message.body, sent_event),
                        exchange="",
                        routing_key=message.queue,
                        queue=message.queue,
                        retry=True,
                        retry_policy=policy,
                        timeout=self.timeout,
                        confirm_timeout=self.timeout,
                    )
        except Exception as exc:  # kombu raises transport-specific errors
            raise PublishError(
                f"The broker did not take the event: {describe(exc)}. Some deliveries may have"
                " been sent (fan-out is atomic on Redis and RabbitMQ only)."
            ) from exc

    def send_many(self, batches: Sequence[Outgoing]) -> None:
        # Not atomic across events: each is sent as publish sends it (see send_each).
        send_each(self, batches)

    async def asend_many(self, batches: Sequence[Outgoing]) -> None:
        # kombu has no asyncio API (py-amqp neither): the blocking send, in a thread.
        await send_in_thread(self, batches)

    async def aclose(self) -> None:
        """Nothing is opened per event loop."""

    def prepare_worker(self, bus: ServiceBus) -> None:
        """Nothing to adjust."""

    def check_worker(self, bus: ServiceBus) -> None:
        """Nothing to check beyond what every backend checks."""

    def queue_reader(self, timeout: float) -> QueueReader:
        raise ConfigurationError(
            f"The broker is {self.name!r}; queue status is read from a redis:// broker only."
        )

    def close(self) -> None:
        """The producer pool is the app's, closed with it."""
