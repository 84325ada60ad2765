"""What a handler may raise to steer its own delivery, besides returning or failing.

>>> from celery import Celery
>>> from celery_events import EventBus, Reject, Retry
>>> from celery_events.testing import HandlerRunner
>>> bus = EventBus(Celery("payments", broker="memory://"), service="payments")
>>> busy = [False, True]                   # the payment gateway is busy once
>>> @bus.subscribe("payment.requested")
... def charge(event):
...     if busy.pop():
...         raise Retry(delay=30)          # try again in 30 s; logged as a retry, not an error
...     if event.data["amount"] <= 0:
...         raise Reject("amount must be positive")   # give up now: straight to dead letters
>>> bus.register()
[Subscription(pattern='payment.requested', ...)]
>>> result = bus.publish("payment.requested", {"amount": 0})
>>> [run] = HandlerRunner().work(bus)      # as the worker would: the retry runs at once
>>> run.status, run.retry_delays, run.reason
('dead_lettered', (30.0,), 'rejected')
"""

from __future__ import annotations

__all__ = ["Retry", "Reject"]


class Retry(Exception):
    """Ask for this delivery to run again after ``delay`` seconds (default: the backoff).

    A retry counts toward the handler's ``max_retries``; when they are used up, the delivery
    becomes a dead letter.
    """

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        if delay is not None and (isinstance(delay, bool) or delay < 0):
            raise ValueError(f"Retry(delay=...) must be a number of seconds >= 0, not {delay!r}.")
        self.delay = delay
        self.reason = reason
        super().__init__(reason or (f"retry in {delay} s" if delay is not None else "retry"))

    def __reduce__(self) -> tuple[type[Retry], tuple[float | None, str]]:
        # Made again from its own arguments: Celery pickles a run's exception (the prefork
        # pool's result, HandlerRun.error), and Exception's default would call Retry(message).
        return type(self), (self.delay, self.reason)


class Reject(Exception):
    """Give up on this delivery at once: no retries, straight to the dead letters."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
