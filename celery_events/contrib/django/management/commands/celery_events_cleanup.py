"""``manage.py celery_events_cleanup``: delete old sent outbox rows and old inbox rows."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from celery_events.contrib.django.outbox import cleanup


class Command(BaseCommand):
    help = (
        "Delete outbox rows sent more than CELERY_EVENTS['outbox_retention'] seconds ago and"
        " inbox rows older than CELERY_EVENTS['inbox_retention']."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", help="database alias of the outbox and inbox")

    def handle(self, *args: Any, **options: Any) -> None:
        outbox, inbox = cleanup(options["database"])
        self.stdout.write(f"Deleted {outbox} outbox row(s) and {inbox} inbox row(s).")
