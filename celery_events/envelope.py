"""The event and its CloudEvents 1.0 envelope, the only thing that travels on the wire.

An envelope is a JSON object with the CloudEvents attributes ``id``, ``type`` (the event name),
``source`` (the publishing service), ``time``, ``specversion``, ``datacontenttype`` and
``data``, plus the extensions ``correlationid`` and ``causationid``. Data must be a JSON object;
nothing but plain JSON types is accepted, so every subscriber, in any language, reads the same
thing the publisher wrote.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .errors import EventTooLarge, InvalidEnvelope, InvalidEventData, InvalidEventName, describe
from .names import validate_name

__all__ = ["Event", "SPECVERSION", "DATACONTENTTYPE", "encode_data"]

SPECVERSION = "1.0"
DATACONTENTTYPE = "application/json"
_REQUIRED = ("id", "type", "source", "time", "specversion", "data")


@dataclass(frozen=True)
class Event:
    """One event as a handler sees it.

    >>> event = Event.create("user.registered", {"user_id": 7}, source="users")
    >>> event.name, event.data["user_id"], event.correlation_id == event.id
    ('user.registered', 7, True)
    """

    id: str
    name: str
    data: dict[str, Any]
    source: str
    time: datetime
    correlation_id: str
    causation_id: str | None = None
    specversion: str = field(default=SPECVERSION)

    @classmethod
    def create(
        cls,
        name: str,
        data: dict[str, Any],
        *,
        source: str,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        id: str | None = None,
        time: datetime | None = None,
    ) -> Event:
        """Make a new event; a fresh event starts its own correlation chain."""
        validate_name(name)
        event_id = id or str(uuid.uuid4())
        return cls(
            id=event_id,
            name=name,
            data=data,
            source=source,
            time=time or datetime.now(timezone.utc),
            correlation_id=correlation_id or event_id,
            causation_id=causation_id,
        )

    def to_envelope(self) -> dict[str, Any]:
        """Return the CloudEvents 1.0 envelope of this event as a JSON-ready dict."""
        return {
            "specversion": self.specversion,
            "id": self.id,
            "type": self.name,
            "source": self.source,
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "datacontenttype": DATACONTENTTYPE,
            "correlationid": self.correlation_id,
            "causationid": self.causation_id,
            "data": self.data,
        }

    @classmethod
    def from_envelope(cls, envelope: object) -> Event:
        """Read an envelope received from the wire, or raise :class:`InvalidEnvelope`."""
        if not isinstance(envelope, dict):
            raise InvalidEnvelope(
                f"An envelope must be a JSON object, not {type(envelope).__name__}."
            )
        missing = [key for key in _REQUIRED if key not in envelope]
        if missing:
            raise InvalidEnvelope(
                f"The envelope lacks the CloudEvents attribute(s) {', '.join(missing)}."
            )
        if envelope["specversion"] != SPECVERSION:
            raise InvalidEnvelope(
                f"The envelope's specversion is {envelope['specversion']!r}; only"
                f" {SPECVERSION!r} is understood."
            )
        for key in ("id", "source", "time"):
            if not isinstance(envelope[key], str) or not envelope[key]:
                raise InvalidEnvelope(f"The envelope's {key!r} must be a non-empty string.")
        try:
            name = validate_name(envelope["type"])
        except InvalidEventName as exc:
            raise InvalidEnvelope(f"The envelope's type is invalid: {exc}") from exc
        if not isinstance(envelope["data"], dict):
            raise InvalidEnvelope("The envelope's data must be a JSON object.")
        try:
            time = datetime.fromisoformat(envelope["time"].replace("Z", "+00:00"))
        except ValueError as exc:
            raise InvalidEnvelope(
                f"The envelope's time {envelope['time']!r} is not an RFC 3339 timestamp."
            ) from exc
        correlation_id = envelope.get("correlationid") or envelope["id"]
        causation_id = envelope.get("causationid")
        if not isinstance(correlation_id, str) or not (
            causation_id is None or isinstance(causation_id, str)
        ):
            raise InvalidEnvelope("The envelope's correlationid and causationid must be strings.")
        return cls(
            id=envelope["id"],
            name=name,
            data=envelope["data"],
            source=envelope["source"],
            time=time,
            correlation_id=correlation_id,
            causation_id=causation_id,
        )


def encode_data(name: str, data: object, max_size: int) -> str:
    """Check that ``data`` is a JSON object within ``max_size`` bytes; return its JSON text.

    Raises :class:`InvalidEventData` or :class:`EventTooLarge` naming what is wrong, so bad
    input fails in the caller and never reaches a worker.
    """
    if not isinstance(data, dict):
        raise InvalidEventData(
            f"The data of event {name!r} must be a dict (a JSON object), not"
            f" {type(data).__name__}. Wrap it: {{'value': ...}}."
        )
    try:
        text = json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidEventData(
            f"The data of event {name!r} cannot be encoded as JSON: {describe(exc)}. Send only dicts,"
            " lists, strings, numbers, booleans and None; convert datetimes, decimals and UUIDs"
            " to strings first."
        ) from exc
    if len(text) > max_size:
        raise EventTooLarge(
            f"The data of event {name!r} is {len(text)} bytes of JSON, over the max_event_size"
            f" of {max_size} bytes. Send a reference (an id or a URL) instead of the payload,"
            " or raise max_event_size."
        )
    return text
