"""The three services of the soak run (benchmarks/soak.py), in one module: ``SOAK_SERVICE`` picks
which one a ``celery -A benchmarks.soak_service worker`` process is.

The flow, three deliveries per event the soak publishes::

    shop (the soak process) ── order.placed ──▶ orders.reserve_stock
                                            └─▶ billing.charge ── invoice.issued ──▶ mail.send_invoice

Every handler counts its run of event ``n`` (``data["n"]``) in the *tally* Redis, a server of
its own (``SOAK_TALLY``), so that the counting adds nothing to the memory and the keys measured
on the bus's Redis: a 2-bit saturating counter per (handler, n) in a bitfield, which tells lost
(0) from handled once (1) and duplicated (2 or more), and a plain count of runs.

Environment: ``BENCH_BROKER`` (the bus's Redis, set by benchmarks/_env.py ``WorkerProcess``),
``SOAK_SERVICE``, ``SOAK_TALLY`` (a Redis URL), ``SOAK_WINDOW`` (the inbox window, seconds).
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery, signals

from celery_events import Event, EventBus

from ._keys import SOAK_COUNT_KEY, SOAK_READY_KEY, SOAK_RUNS_KEY, SOAK_SERVICES

SERVICE = os.environ.get("SOAK_SERVICE", "")
if SERVICE not in SOAK_SERVICES:
    raise SystemExit(f"SOAK_SERVICE is {SERVICE!r}; set it to one of {', '.join(SOAK_SERVICES)}.")

app = Celery(SERVICE, broker=os.environ["BENCH_BROKER"])
bus = EventBus(app, service=SERVICE, inbox_ttl=float(os.environ["SOAK_WINDOW"]))

_tally: redis.Redis | None = None
_tally_pid = 0


def tally() -> redis.Redis:
    """A client of the tally Redis, one per process (prefork children do not share sockets)."""
    global _tally, _tally_pid
    if _tally is None or _tally_pid != os.getpid():
        _tally, _tally_pid = redis.Redis.from_url(os.environ["SOAK_TALLY"]), os.getpid()
    return _tally


def handled(handler: str, event: Event) -> None:
    """Count this run of ``event`` by ``handler`` (one round trip to the tally Redis)."""
    n = int(event.data["n"])
    pipe = tally().pipeline(transaction=False)
    pipe.execute_command(
        "BITFIELD",
        SOAK_RUNS_KEY.format(handler=handler),
        "OVERFLOW",
        "SAT",
        "INCRBY",
        "u2",
        f"#{n}",
        1,
    )
    pipe.incr(SOAK_COUNT_KEY.format(handler=handler))
    pipe.execute()


if SERVICE == "orders":

    @bus.subscribe("order.placed")
    def reserve_stock(event: Event) -> None:
        handled("orders.reserve_stock", event)

elif SERVICE == "billing":

    @bus.subscribe("order.placed")
    def charge(event: Event) -> None:
        order = event.data
        bus.publish(
            "invoice.issued",
            {"n": order["n"], "order_id": order["order_id"], "amount": order["total"]},
        )
        handled("billing.charge", event)

else:

    @bus.subscribe("invoice.issued")
    def send_invoice(event: Event) -> None:
        handled("mail.send_invoice", event)


@signals.worker_ready.connect
def _ready(sender: Any = None, **kwargs: Any) -> None:
    tally().set(SOAK_READY_KEY.format(service=SERVICE), "1")
