"""The dead letters of every service sharing a state store, for operators.

Each service keeps its own store (:class:`~celery_events.DeadLetterStore`); the operator CLI
runs with one service's app but looks at all of them: every service in the registry, and any
service whose store still holds letters after it left the registry. Another service's dead
letter is replayed only to a handler that service subscribes in the registry, on the queue of
that subscription.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

from .bus import EventBus
from .deadletters import DeadLetter, DeadLetterNotFound, DeadLetterStore, ReplayError

# Aliases: the class below has a method named ``list``.
Letters = list[DeadLetter]
Stores = list[DeadLetterStore]
Names = list[str]


class AllDeadLetters:
    """Read and act on dead letters across services, through one service's bus."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.state = bus.backend.state

    def services(self) -> Names:
        """Every service that subscribes or holds dead letters, sorted."""
        found = {s.service for s in self.bus.registry.subscriptions()}
        found.update(self.state.dead_letter_services())
        return sorted(found)

    def store(self, service: str) -> DeadLetterStore:
        if service == self.bus.service:
            return self.bus.dead_letters
        return DeadLetterStore(
            self.state.dead_letters(service),
            service,
            resend=partial(self._resend, service=service),
            route=partial(self._route, service=service),
            check=self.bus._trust.replay_check,
        )

    def _resend(self, envelope: dict[str, object], handler: str, queue: str, *, service: str) -> str:
        return self.bus._resend(envelope, handler, queue, service)

    def _route(self, handler: str, *, service: str) -> str:
        """The queue of ``service``'s subscription for ``handler``, from the registry."""
        subscriptions = [s for s in self.bus.registry.subscriptions() if s.service == service]
        for subscription in subscriptions:
            if subscription.handler == handler:
                return subscription.queue
        known = ", ".join(sorted({s.handler for s in subscriptions})) or "none"
        raise ReplayError(
            f"Service {service!r} does not subscribe a handler {handler!r} in the registry (its"
            f" handlers there are {known}), so its dead letter is not replayed to it; start a"
            " worker of that service so that it registers, or purge the dead letter."
        )

    def stores(self, service: str | None = None) -> Stores:
        names = self.services() if service is None else [service]
        return [self.store(name) for name in names]

    def count(self, service: str) -> int:
        return self.store(service).count()

    def list(
        self,
        *,
        service: str | None = None,
        handler: str | None = None,
        event_name: str | None = None,
        reason: str | None = None,
        limit: int | None = 100,
    ) -> Letters:
        """Dead letters of every service (or one), newest first."""
        letters: Letters = []
        for store in self.stores(service):
            letters.extend(
                store.list(handler=handler, event_name=event_name, reason=reason, limit=limit)
            )
        letters.sort(key=lambda letter: letter.last_failed_at, reverse=True)
        return letters if limit is None else letters[:limit]

    def get(self, id: str) -> DeadLetter:
        """The dead letter ``id``, whichever service holds it."""
        for store in self.stores():
            try:
                return store.get(id)
            except DeadLetterNotFound:
                continue
        raise DeadLetterNotFound(
            f"No service has a dead letter {id!r}; list them with"
            " `celery -A app eventbus dead-letters list`."
        )

    def select(
        self,
        id: str | None,
        *,
        service: str | None = None,
        handler: str | None = None,
        event_name: str | None = None,
        reason: str | None = None,
    ) -> Letters:
        if id is not None:
            return [self.get(id)]
        return self.list(
            service=service, handler=handler, event_name=event_name, reason=reason, limit=None
        )

    def replay(self, letters: Iterable[DeadLetter]) -> Letters:
        """Replay ``letters``, each as a fresh delivery; none is replayed if one cannot be."""
        letters = list(letters)
        for letter in letters:
            self.store(letter.service).replay_target(letter)
        for letter in letters:
            self.store(letter.service).replay(letter.id)
        return letters

    def purge(self, letters: Iterable[DeadLetter]) -> int:
        """Delete ``letters`` for good; returns how many were deleted."""
        return sum(self.store(letter.service).purge(letter.id) for letter in letters)
