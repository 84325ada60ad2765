"""``manage.py celery_events_relay``: send the outbox's events, until stopped or drained."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from celery_events.contrib.django._bus import get_bus
from celery_events.contrib.django.outbox import OutboxRelay
from celery_events.errors import PublishError


class Command(BaseCommand):
    help = (
        "Send the events waiting in the transactional outbox and mark them sent. Runs until"
        " SIGTERM or Ctrl-C, or with --drain until nothing is left. Several relays may run"
        " at once; they never send one event twice."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--drain", action="store_true", help="send what is waiting, then exit"
        )
        parser.add_argument("--interval", type=float, help="seconds between polls when idle")
        parser.add_argument("--batch-size", type=int, help="events per transaction")
        parser.add_argument("--database", help="database alias of the outbox")

    def handle(self, *args: Any, **options: Any) -> None:
        for name in ("interval", "batch_size"):
            if options[name] is not None and options[name] <= 0:
                raise CommandError(f"--{name.replace('_', '-')} must be positive.")
        relay = OutboxRelay(
            get_bus(),
            using=options["database"],
            batch_size=options["batch_size"],
            interval=options["interval"],
        )
        if options["drain"]:
            try:
                relay.drain()
            except PublishError as exc:
                raise CommandError(f"{exc} ({relay.sent} event(s) were sent.)") from exc
        else:
            stop = threading.Event()
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: stop.set())
            self.stdout.write(f"Relaying the outbox of database {relay.using!r}.")
            relay.run(stop)
        self.stdout.write(f"Sent {relay.sent} event(s).")
