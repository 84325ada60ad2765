"""Signed events: each publisher signs its events, each subscriber checks them before anything
else runs.

What is signed: :func:`~celery_events.envelope.signing_input` of the envelope exactly as it
goes on the wire (its ``id``, ``type``, ``source``, ``time``, ``data``, correlation ids and
every extension attribute, the signature's own two excepted), once per event whatever its
number of subscribers. The data is signed as the subscriber will read it: parsed back from
the JSON text that is sent, so that no difference between a Python value and its JSON
(a tuple, a subclass of ``str``, a dict changed after publish was called) can make a valid
event fail its check.

Guarantees, with signing on (``signing_key`` on the publisher, ``trusted_keys`` on the
subscriber, ``require_signatures`` left at its default):

- A service signs only as itself: publishing an event whose ``source`` is another service
  raises :class:`~celery_events.ForeignSourceRefused`, and nothing is sent.
- A subscriber checks every delivery before its inbox is asked and before its handler runs:
  one that is unsigned, whose signature cannot be read, names a key the subscriber does not
  trust or a key of another service than the event's ``source``, does not match what it signs,
  or was made longer than ``signature_max_age`` ago (or more than :data:`CLOCK_SKEW` in the
  future) is dead-lettered with reason ``invalid_signature`` at once; its handler never runs.
- A retry, a dead letter's replay and the Django outbox send the signed envelope as it was
  (the outbox signs when its relay sends the event), so the signature holds. A replay of a
  signed event older than ``signature_max_age`` raises :class:`~celery_events.ReplayError`
  and sends nothing: every subscriber would refuse it.
- A copy of a signed delivery pushed again is either a duplicate the inbox skips (the inbox
  remembers a handled delivery ``inbox_ttl``, at least ``signature_max_age``) or too old.

With ``require_signatures=False`` (the migration mode) a signature that is there is checked,
for every source this service has a key of, and an unsigned event passes: turn signing on in
every publisher first, then require signatures in the subscribers.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .._attributes import adopt_extensions, check_attributes
from .._frozen import copied
from ..deadletters import Reason, ReplayError
from ..envelope import Event, signing_input
from ..errors import (
    ConfigurationError,
    DeliveryRefused,
    ForeignSourceRefused,
    InvalidSignature,
)
from ..middleware.base import REPLAY, Middleware, PublishCall, PublishNext, Receipt
from .keys import Keyring, SigningKey, b64encode, load_signing_key, load_trusted_keys

if TYPE_CHECKING:
    from ..results import PublishResult
    from ..settings import Settings

__all__ = ["Signing", "sign_event", "CLOCK_SKEW", "retry_schedule"]

log = logging.getLogger(__name__)

#: How far in the future an event's ``time`` may be, in seconds, for clocks that differ.
CLOCK_SKEW = 300.0
#: How many verified signatures a process remembers (the same event to several handlers).
VERIFIED_CACHE = 1024


def _signed_envelope(event: Event, data_json: str | None) -> dict[str, Any]:
    envelope = event.to_envelope()
    # What the subscriber reads is the JSON that is sent, parsed: sign that.
    envelope["data"] = json.loads(data_json if data_json else json.dumps(event.data))
    return envelope


def sign_event(event: Event, key: SigningKey, *, data_json: str | None = None) -> Event:
    """``event`` with a signature by ``key`` (extensions ``signature`` and ``signaturekeyid``).

    For tools and tests that make signed events by hand (the bus signs its own). ``data_json``
    is the JSON text the data goes on the wire as, if known.

    >>> from celery_events import Event
    >>> from celery_events.trust import generate_hmac, load_signing_key
    >>> from celery_events.trust.signing import sign_event
    >>> key = load_signing_key("shop", {"key_id": "2026-01", "key": generate_hmac().decode()})
    >>> signed = sign_event(Event.create("order.placed", {}, source="shop"), key)
    >>> signed.extensions["signaturekeyid"] == key.key_id
    True
    """
    if event.source != key.service:
        raise ForeignSourceRefused(
            f"The event's source is {event.source!r}, and the key is {key.service!r}'s: a key"
            " signs only events of its own service."
        )
    signature = b64encode(key.sign(signing_input(_signed_envelope(event, data_json))))
    return event.with_extensions(signature=signature, signaturekeyid=key.key_id)


def retry_schedule(max_retries: int, backoff: float, backoff_max: float, time_limit: float) -> float:
    """The longest time, in seconds, from a delivery's first run to its last retry's end:
    every retry waiting its longest, every run taking its whole time limit."""
    waits = sum(min(backoff_max, backoff * 2.0 ** (n - 1)) for n in range(1, max_retries + 1))
    return float(waits + (max_retries + 1) * time_limit)


class Signing(Middleware):
    """Signs this service's events as they go out, and checks the signature of every delivery
    as it comes in (see the module's docstring). The bus makes it from its settings
    (:func:`~celery_events.trust.middleware_for`); it is the innermost middleware.
    """

    def __init__(
        self,
        service: str,
        keyring: Keyring,
        *,
        require: bool,
        max_age: float,
        clock_skew: float = CLOCK_SKEW,
    ) -> None:
        self.service = service
        self.keyring = keyring
        #: Whether an unsigned delivery is refused (False: the migration mode).
        self.require = require
        self.max_age = float(max_age)
        self.clock_skew = float(clock_skew)
        self._services = keyring.services()
        self._warned_unsigned = False
        self._verified: dict[tuple[Any, Any, bytes], None] = {}

    @classmethod
    def from_settings(cls, service: str, settings: Settings) -> Signing | None:
        """The signing middleware ``settings`` ask for, or None when signing is off; raises
        :class:`~celery_events.ConfigurationError` for settings that cannot work together."""
        require = settings.require_signatures
        if settings.signing_key is None and settings.trusted_keys is None:
            if require:
                raise ConfigurationError(
                    f"Service {service!r} has require_signatures=True but no trusted_keys, so"
                    " every delivery would be refused: set trusted_keys to the directory of"
                    " the public keys of the services it hears from (celery eventbus keys"
                    " generate writes them)."
                )
            return None
        signing_key = (
            None if settings.signing_key is None
            else load_signing_key(service, settings.signing_key)
        )
        trusted = load_trusted_keys(settings.trusted_keys)
        ring = Keyring(signing_key, trusted)
        if require is None:
            require = settings.trusted_keys is not None
        if require and not trusted:
            raise ConfigurationError(
                f"Service {service!r} requires signatures but trusts no key"
                f" (trusted_keys is {settings.trusted_keys!r}): every delivery would be"
                " refused. Put the .pub (or .hmac) files of the services it hears from there,"
                " or set require_signatures=False while signing is being turned on."
            )
        if settings.signature_max_age > settings.inbox_ttl:
            raise ConfigurationError(
                f"The setting signature_max_age ({settings.signature_max_age:g} s) is longer"
                f" than inbox_ttl ({settings.inbox_ttl:g} s): a signed delivery pushed again"
                " after its inbox record expired would pass its check and run twice. Lower"
                " signature_max_age or raise inbox_ttl."
            )
        return cls(service, ring, require=bool(require), max_age=settings.signature_max_age)

    # -- publishing -------------------------------------------------------------------------

    def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
        if call.origin == REPLAY:
            # A replay keeps the signature its event was published with.
            problem = self.replay_problem(call.event.to_envelope())
            if problem is not None:
                raise ReplayError(problem)
            return call_next(call)
        key = self.keyring.signing_key
        event = call.event
        if key is None:
            if not self._warned_unsigned:
                self._warned_unsigned = True
                log.warning(
                    "celery-events: service %r has no signing_key; its events go out unsigned"
                    " and subscribers that require signatures dead-letter them",
                    self.service,
                )
            return call_next(call)
        if event.source != self.service:
            raise ForeignSourceRefused(
                f"Event {event.id} ({event.name!r}) has source {event.source!r}, but this is"
                f" service {self.service!r}, which signs its events: a service signs only as"
                " itself, so it was not sent. Publish it from that service, or leave out"
                " source (bus.new_event makes an event of this service)."
            )
        envelope = _signed_envelope(event, call.data_json)
        extensions = {
            **event.extensions,
            "signature": b64encode(key.sign(signing_input(envelope))),
            "signaturekeyid": key.key_id,
        }
        if event.extensions or event.subject is not None or event.dataschema is not None:
            # The envelope's attributes must still fit their size limit with the signature
            # (alone, its two attributes are a small fraction of it: nothing to check).
            check_attributes(extensions, event.subject, event.dataschema)
        # The event goes on with the data as signed (parsed from data_json, which is still its
        # JSON): a transport that encodes the event's dict again (kombu's) sends the same, and
        # a caller that changes its dict later changes nothing that was signed.
        signed = copied(
            event, Event, data=envelope["data"], extensions=adopt_extensions(extensions)
        )
        return call_next(copied(call, PublishCall, event=signed))

    def replay_problem(self, envelope: dict[str, Any]) -> str | None:
        """Why a replay of ``envelope`` would be refused by every subscriber checking
        signatures (a signed event older than ``signature_max_age``), or None."""
        if not envelope.get("signature"):
            return None
        try:
            when = Event.from_envelope(envelope).time
        except Exception:  # an invalid envelope is refused on its own terms by the replay
            return None
        age = time.time() - when.timestamp()
        if age <= self.max_age:
            return None
        return (
            f"event {envelope.get('id')} was signed {_duration(age)} ago, longer than"
            f" signature_max_age ({_duration(self.max_age)}), so every subscriber checking"
            " signatures would refuse it as invalid_signature; it is not sent. Raise"
            " signature_max_age (of this service and the subscriber) to replay it, or purge it."
        )

    # -- receiving --------------------------------------------------------------------------

    def receive(self, receipt: Receipt) -> Receipt:
        envelope = receipt.envelope
        signature = envelope.get("signature")
        source = receipt.event.source
        if signature is None:
            if not self.require:
                return receipt
            raise self._refused(
                f"the event is not signed, and service {self.service!r} requires every event"
                f" to be signed by its source ({source!r})"
            )
        if not self.require and source not in self._services:
            # The migration mode: nothing to check it with, as for an unsigned event.
            return receipt
        try:
            message = signing_input(envelope)
        except (TypeError, ValueError) as exc:
            raise self._refused(f"the envelope cannot be put in canonical form ({exc})") from None
        key_id = envelope.get("signaturekeyid")
        # Only strings are remembered: anything else (a list from a forged envelope) is not
        # hashable, and is refused by the check below.
        seen = (key_id, signature, message)
        if not (isinstance(key_id, str) and isinstance(signature, str)) or seen not in self._verified:
            try:
                self.keyring.verify(source, key_id, message, signature)
            except InvalidSignature as exc:
                raise self._refused(str(exc)) from None
            # The deliveries of one event to this service's other handlers (and its retries)
            # carry the same bytes: checked once per process. Bounded, and cleared at once
            # rather than evicted one by one, which needs no lock between pool threads.
            if len(self._verified) >= VERIFIED_CACHE:
                self._verified.clear()
            self._verified[seen] = None
        age = time.time() - receipt.event.time.timestamp()
        if age > self.max_age:
            raise self._refused(
                f"the event was signed at {_stamp(receipt.event.time)}, {_duration(age)} ago,"
                f" longer than signature_max_age ({_duration(self.max_age)}): it is too old"
            )
        if age < -self.clock_skew:
            raise self._refused(
                f"the event's time {_stamp(receipt.event.time)} is {_duration(-age)} in the"
                f" future, more than the {_duration(self.clock_skew)} clocks may differ by"
            )
        return receipt

    @staticmethod
    def _refused(why: str) -> DeliveryRefused:
        text = why[0].upper() + why[1:]
        return DeliveryRefused(
            f"Invalid signature: {text.rstrip('.')}.", reason=Reason.INVALID_SIGNATURE
        )

    # -- worker start -----------------------------------------------------------------------

    def check_handlers(self, handlers: Any) -> None:
        """Raise :class:`~celery_events.ConfigurationError` if a handler's retries may last
        longer than ``signature_max_age``: its last retries would be refused as too old."""
        if not self.require and not self._services:
            return
        for handler in handlers:
            policy = handler.retry
            longest = retry_schedule(
                policy.max_retries, policy.backoff, policy.backoff_max, handler.time_limit
            )
            if longest > self.max_age:
                raise ConfigurationError(
                    f"Handler {handler.task_name!r} may retry for up to {_duration(longest)}"
                    f" ({policy.max_retries} retries of up to {policy.backoff_max:g} s, a"
                    f" time limit of {handler.time_limit:g} s), longer than signature_max_age"
                    f" ({_duration(self.max_age)}): its last retries would be refused as too"
                    " old. Raise signature_max_age, or give it fewer or shorter retries."
                )


def _stamp(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
