"""Middleware the settings tests name in CELERY_EVENTS['middleware']."""

from __future__ import annotations

from celery_events import Middleware, PublishCall, PublishResult
from celery_events.middleware import PublishNext


class Stamp(Middleware):
    def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
        return call_next(call.with_event(call.event.with_extensions(tenant="acme")))


class NeedsArguments(Middleware):
    def __init__(self, tenant: str) -> None:
        self.tenant = tenant


stamp = Stamp()
not_middleware = object()
