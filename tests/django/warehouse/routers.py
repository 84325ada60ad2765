"""Sends the warehouse's models to the database CELERY_EVENTS names, read on each query."""

from typing import Any


class FollowCeleryEvents:
    def _db(self, model: Any) -> str | None:
        if model._meta.app_label != "warehouse":
            return None
        from celery_events.contrib.django.conf import read_config

        return read_config().database

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return self._db(model)

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return self._db(model)
