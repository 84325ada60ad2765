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

from ._plainjson import DEFAULT_MAX_DEPTH, Problem, find_problem
from .errors import EventTooLarge, InvalidEnvelope, InvalidEventData, InvalidEventName, describe
from .names import validate_name

__all__ = ["Event", "SPECVERSION", "DATACONTENTTYPE", "encode_data", "check_ids"]

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
        """Make a new event; a fresh event starts its own correlation chain.

        ``id``, ``correlation_id`` and ``causation_id`` must be strings when given (an empty
        one counts as not given) and ``time`` a timezone-aware datetime; anything else raises
        :class:`InvalidEnvelope`, as a bad ``name`` raises :class:`InvalidEventName`.
        """
        validate_name(name)
        check_ids(id=id, correlation_id=correlation_id, causation_id=causation_id)
        event_id = id or str(uuid.uuid4())
        event = cls(
            id=event_id,
            name=name,
            data=data,
            source=source,
            time=datetime.now(timezone.utc) if time is None else time,
            correlation_id=correlation_id or event_id,
            causation_id=causation_id or None,
        )
        event.validate()
        return event

    def validate(self) -> None:
        """Raise if this event cannot be sent as it is, so that no subscriber dead-letters it.

        The name must be valid (else :class:`InvalidEventName`); ``id``, ``source`` and
        ``correlation_id`` non-empty strings, ``causation_id`` one or None, ``time`` a
        timezone-aware datetime and ``specversion`` ``"1.0"`` (else :class:`InvalidEnvelope`).
        The data is checked when the event is published (:func:`encode_data`).

        >>> Event.create("user.registered", {}, source="users").validate()
        """
        validate_name(self.name)
        for attribute in ("id", "source", "correlation_id"):
            value = getattr(self, attribute)
            if not isinstance(value, str) or not value:
                raise InvalidEnvelope(
                    f"The event's {attribute} must be a non-empty string, not {value!r}"
                    f" ({type(value).__name__})."
                )
        if self.causation_id is not None and (
            not isinstance(self.causation_id, str) or not self.causation_id
        ):
            raise InvalidEnvelope(
                "The event's causation_id must be the id (a non-empty string) of the event that"
                f" caused it, or None; not {self.causation_id!r} ({type(self.causation_id).__name__})."
            )
        if not isinstance(self.time, datetime) or self.time.utcoffset() is None:
            raise InvalidEnvelope(
                f"The event's time must be a timezone-aware datetime, not {self.time!r}. Use"
                " datetime.now(timezone.utc), or leave it out."
            )
        if self.specversion != SPECVERSION:
            raise InvalidEnvelope(
                f"The event's specversion is {self.specversion!r}; subscribers read only"
                f" {SPECVERSION!r}. Leave it out."
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


def check_ids(
    *, id: object = None, correlation_id: object = None, causation_id: object = None
) -> None:
    """Raise :class:`InvalidEnvelope` unless each given id is a string (or None).

    Checked before an empty or missing id is replaced by a default, so that ``0`` or
    ``False`` is refused rather than silently replaced.
    """
    for attribute, value in (
        ("id", id), ("correlation_id", correlation_id), ("causation_id", causation_id)
    ):
        if value is not None and not isinstance(value, str):
            raise InvalidEnvelope(
                f"The event's {attribute} must be a string, not {value!r}"
                f" ({type(value).__name__}). Pass the id of an event (event.id), or leave it"
                " out."
            )


def encode_data(
    name: str, data: object, max_size: int, max_depth: int = DEFAULT_MAX_DEPTH
) -> str:
    """Check that ``data`` is a JSON object within ``max_size`` bytes and ``max_depth`` levels
    of nesting, with only string keys; return its JSON text.

    Raises :class:`InvalidEventData` or :class:`EventTooLarge` naming what is wrong and where
    (``data["a"][3]``), so bad input fails in the caller and never reaches a worker.
    """
    if not isinstance(data, dict):
        raise InvalidEventData(
            f"The data of event {name!r} must be a dict (a JSON object), not"
            f" {type(data).__name__}. Wrap it: {{'value': ...}}."
        )
    # Before json.dumps, which recurses itself: 10,000 levels would raise RecursionError
    # here, and 500 levels encode fine but kill every prefork subscriber while it pickles.
    problem = find_problem(data, max_depth, keys=True)
    if problem is not None:
        raise InvalidEventData(_explain(name, problem, max_depth))
    try:
        text = json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as exc:
        # Walk again, this time looking at every value, only to say where the bad one is.
        found = find_problem(data, max_depth, values=True)
        where = f" at data{found.path}" if found is not None else ""
        raise InvalidEventData(
            f"The data of event {name!r} cannot be encoded as JSON{where}: {describe(exc)}."
            " Send only dicts, lists, strings, finite numbers, booleans and None; convert"
            " datetimes, decimals and UUIDs to strings first."
        ) from exc
    if len(text) > max_size:
        raise EventTooLarge(
            f"The data of event {name!r} is {len(text)} bytes of JSON, over the max_event_size"
            f" of {max_size} bytes. Send a reference (an id or a URL) instead of the payload,"
            " or raise max_event_size."
        )
    return text


def _explain(name: str, problem: Problem, max_depth: int) -> str:
    where = f"data{problem.path}"
    if problem.kind == "key":
        key = problem.culprit
        return (
            f"The data of event {name!r} has the key {key!r} ({type(key).__name__}) in {where};"
            " JSON keys are strings, and turning it into one could silently merge it with"
            f" another key. Use a string key, such as {str(key)!r}."
        )
    if problem.kind == "cycle":
        return (
            f"The data of event {name!r} contains itself: {where} is one of the containers"
            " it is in. JSON cannot encode a cycle; send a copy without it."
        )
    return (
        f"The data of event {name!r} nests lists and objects more than {max_depth} levels"
        f" deep ({where} is level {max_depth + 1}), and subscribers refuse data that deep."
        " Flatten it or send a reference (an id or a URL), or raise the max_event_depth"
        " setting of the publisher and of every subscriber."
    )
