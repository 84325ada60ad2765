"""The event and its CloudEvents 1.0 envelope, the only thing that travels on the wire.

An envelope is a JSON object (the CloudEvents JSON format) with the attributes ``id``, ``type``
(the event name), ``source`` (the publishing service), ``time``, ``specversion``,
``datacontenttype`` and ``data``, this bus's ``correlationid`` and ``causationid``, the optional
core attributes ``subject`` and ``dataschema`` when they are set, and any extension attributes
(``traceparent``, a signature, ...), which every part of the bus keeps: the handler sees them,
and so do retries, the lost-delivery ledger, dead letters and their replay, and the Django
outbox. Data must be a JSON object; nothing but plain JSON types is accepted, so every
subscriber, in any language, reads the same thing the publisher wrote.

``subject`` and ``dataschema`` are attributes of :class:`Event` of their own, not extensions:
the spec defines their meaning and type (a non-empty string; an absolute URI), CloudEvents SDKs
expose them as such, and a future schema registry sets ``dataschema`` by event type. What the
envelope does not keep: ``datacontenttype`` (data is always a JSON object, written as
``application/json``; any JSON media type is accepted on receipt).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from ._attributes import (
    NO_EXTENSIONS,
    Extensions,
    ExtensionValue,
    adopt_extensions,
    check_attributes,
)
from ._frozen import copied
from ._plainjson import DEFAULT_MAX_DEPTH, Problem, find_problem
from .errors import EventTooLarge, InvalidEnvelope, InvalidEventData, InvalidEventName, describe
from .names import validate_name

__all__ = [
    "Event",
    "Extensions",
    "ExtensionValue",
    "SPECVERSION",
    "DATACONTENTTYPE",
    "encode_data",
    "check_ids",
    "signing_input",
    "SIGNATURE_ATTRIBUTES",
]

SPECVERSION = "1.0"
DATACONTENTTYPE = "application/json"
_REQUIRED = ("id", "type", "source", "time", "specversion", "data")
#: The members of an envelope that are not extensions; what this bus writes is the first nine.
_NOT_EXTENSIONS = frozenset(
    {
        "specversion", "id", "type", "source", "time", "datacontenttype", "correlationid",
        "causationid", "data", "subject", "dataschema",
    }
)
# application/json, text/json, application/cloudevents+json, ...; parameters allowed.
_JSON_MEDIA_TYPE_RE = re.compile(r"(?:application|text)/(?:[A-Za-z0-9.!#$&^_-]+\+)?json\s*(?:;.*)?\Z", re.I | re.S)
_RFC3339_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))\Z"
)


@dataclass(frozen=True)
class Event:
    """One event as a handler sees it.

    ``extensions`` holds the event's CloudEvents extension attributes (``traceparent``, a
    signature, a tenant), an immutable mapping of lowercase alphanumeric names to strings,
    integers or booleans; ``subject`` and ``dataschema`` are the optional core attributes of
    the same names. All three are kept end to end, from the publisher to every handler.

    >>> from celery_events import Event
    >>> event = Event.create("user.registered", {"user_id": 7}, source="users")
    >>> event.name, event.data["user_id"], event.correlation_id == event.id
    ('user.registered', 7, True)
    >>> event.with_extensions(tenant="acme").extensions
    {'tenant': 'acme'}
    """

    id: str
    name: str
    data: dict[str, Any]
    source: str
    time: datetime
    correlation_id: str
    causation_id: str | None = None
    specversion: str = field(default=SPECVERSION)
    extensions: Mapping[str, ExtensionValue] = field(default=NO_EXTENSIONS)
    subject: str | None = None
    dataschema: str | None = None

    def __post_init__(self) -> None:
        # Frozen from here on: a dict given by the caller is copied, so changing it later
        # cannot change the event (or an envelope already sent).
        if type(self.extensions) is not Extensions:
            object.__setattr__(self, "extensions", Extensions(self.extensions))

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
        extensions: Mapping[str, ExtensionValue] | None = None,
        subject: str | None = None,
        dataschema: str | None = None,
    ) -> Event:
        """Make a new event; a fresh event starts its own correlation chain.

        ``id``, ``correlation_id`` and ``causation_id`` must be strings when given (an empty
        one counts as not given) and ``time`` a timezone-aware datetime; ``extensions``,
        ``subject`` and ``dataschema`` must follow the CloudEvents rules (see
        :meth:`validate`). Anything else raises :class:`InvalidEnvelope`, as a bad ``name``
        raises :class:`InvalidEventName`.
        """
        validate_name(name)
        check_ids(id=id, correlation_id=correlation_id, causation_id=causation_id)
        event_id = id or str(uuid.uuid4())
        when = datetime.now(timezone.utc) if time is None else time
        if extensions is None and subject is None and dataschema is None:
            # Most events: the defaults, shared, with no copy.
            event = cls(
                event_id, name, data, source, when, correlation_id or event_id,
                causation_id or None,
            )
        else:
            event = cls(
                event_id, name, data, source, when, correlation_id or event_id,
                causation_id or None, SPECVERSION,
                NO_EXTENSIONS if extensions is None else Extensions(extensions),
                subject, dataschema,
            )
        event.validate()
        return event

    def with_extensions(
        self, attributes: Mapping[str, ExtensionValue | None] | None = None, /,
        **more: ExtensionValue | None,
    ) -> Event:
        """Return a copy of this event with these extension attributes added or replaced.

        An attribute given as None is taken out. The new attributes are checked (see
        :meth:`validate`); this is how middleware adds a ``traceparent`` or a signature to an
        event before it is sent. Names that are not Python identifiers (``"1x"``) go in the
        positional mapping.

        >>> from celery_events import Event
        >>> event = Event.create("order.placed", {}, source="shop")
        >>> signed = event.with_extensions({"sig": "c2ln"}, keyid=3)
        >>> signed.extensions, event.extensions, signed.id == event.id
        ({'sig': 'c2ln', 'keyid': 3}, {}, True)
        """
        extensions = self.extensions
        merged: dict[str, ExtensionValue] = (
            extensions.as_dict() if isinstance(extensions, Extensions) else dict(extensions)
        )
        for changes in (attributes, more):
            if not changes:
                continue
            for name, value in changes.items():
                if value is None:
                    merged.pop(name, None)
                else:
                    merged[name] = value
        check_attributes(merged, self.subject, self.dataschema)
        return copied(self, Event, extensions=adopt_extensions(merged) if merged else NO_EXTENSIONS)

    def validate(self) -> None:
        """Raise if this event cannot be sent as it is, so that no subscriber dead-letters it.

        The name must be valid (else :class:`InvalidEventName`); ``id``, ``source`` and
        ``correlation_id`` non-empty strings, ``causation_id`` one or None, ``time`` a
        timezone-aware datetime, ``specversion`` ``"1.0"``, ``subject`` a non-empty string or
        None, ``dataschema`` an absolute URI or None, and every extension attribute a
        lowercase alphanumeric name that is not a core attribute, with a string, an integer
        (32 bits) or a boolean value, all of these within 8 KiB of JSON (else
        :class:`InvalidEnvelope`, naming the attribute and the rule). The data is checked when
        the event is published (:func:`encode_data`).

        >>> from celery_events import Event
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
        if (
            self.extensions is not NO_EXTENSIONS
            or self.subject is not None
            or self.dataschema is not None
        ):
            check_attributes(self.extensions, self.subject, self.dataschema)

    def to_envelope(self) -> dict[str, Any]:
        """Return the CloudEvents 1.0 envelope of this event as a JSON-ready dict.

        ``subject`` and ``dataschema`` appear only when set; extensions follow this bus's own
        attributes, and ``data`` comes last.
        """
        envelope: dict[str, Any] = {
            "specversion": self.specversion,
            "id": self.id,
            "type": self.name,
            "source": self.source,
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "datacontenttype": DATACONTENTTYPE,
            "correlationid": self.correlation_id,
            "causationid": self.causation_id,
        }
        if self.subject is not None:
            envelope["subject"] = self.subject
        if self.dataschema is not None:
            envelope["dataschema"] = self.dataschema
        extensions = self.extensions
        if extensions is not NO_EXTENSIONS:
            # A dict: dict.update reads any other mapping one key at a time.
            envelope.update(
                extensions.as_dict() if isinstance(extensions, Extensions) else extensions
            )
        envelope["data"] = self.data
        return envelope

    @classmethod
    def from_envelope(cls, envelope: object) -> Event:
        """Read an envelope received from the wire, or raise :class:`InvalidEnvelope`.

        Any CloudEvents 1.0 JSON event whose data is a JSON object and whose ``type`` is an
        event name is read, whoever wrote it (the CloudEvents SDKs included): ``time`` in any
        RFC 3339 form, ``datacontenttype`` absent or a JSON media type, and every member that
        is not a core attribute taken as an extension, held to the rules of :meth:`validate`
        (one set to ``null`` counts as not set, as the JSON format says).
        """
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
            # What this bus and the CloudEvents SDKs write: ISO 8601 with 'Z' or an offset.
            time = datetime.fromisoformat(envelope["time"].replace("Z", "+00:00"))
        except ValueError:
            time = _parse_rfc3339(envelope["time"])
        if time.utcoffset() is None:
            raise InvalidEnvelope(
                f"The envelope's time {envelope['time']!r} has no UTC offset; an RFC 3339"
                " timestamp ends in 'Z' or '+hh:mm'."
            )
        correlation_id = envelope.get("correlationid") or envelope["id"]
        causation_id = envelope.get("causationid")
        if not isinstance(correlation_id, str) or not (
            causation_id is None or isinstance(causation_id, str)
        ):
            raise InvalidEnvelope("The envelope's correlationid and causationid must be strings.")
        # What this bus writes for most events is the six required members and these three,
        # nothing else: no extension to look for, nothing to copy.
        if (
            len(envelope) == 9
            and envelope.get("datacontenttype") == DATACONTENTTYPE
            and "correlationid" in envelope
            and "causationid" in envelope
        ):
            return cls(
                envelope["id"], name, envelope["data"], envelope["source"], time,
                correlation_id, causation_id,
            )
        _check_content_type(envelope.get("datacontenttype"))
        if "data_base64" in envelope:
            raise InvalidEnvelope(
                "The envelope has both data and data_base64; an event's data is a JSON"
                " object in data alone."
            )
        subject = envelope.get("subject")
        dataschema = envelope.get("dataschema")
        found = {
            key: value
            for key, value in envelope.items()
            if key not in _NOT_EXTENSIONS and value is not None
        }
        check_attributes(found, subject, dataschema, received=True)
        extensions: Mapping[str, ExtensionValue] = Extensions(found) if found else NO_EXTENSIONS
        return cls(
            envelope["id"], name, envelope["data"], envelope["source"], time, correlation_id,
            causation_id, SPECVERSION, extensions, subject, dataschema,
        )


#: The extension attributes that hold an event's signature, and so are not signed.
SIGNATURE_ATTRIBUTES = frozenset({"signature", "signaturekeyid"})


def signing_input(envelope: dict[str, Any]) -> bytes:
    """The canonical bytes an envelope's signature covers: every member of the envelope (the
    ``id``, ``type``, ``source``, ``time``, the data, ``subject``, ``dataschema``, the ids of
    its correlation and every extension attribute) but the signature's own and those set to
    ``null``, as JSON with sorted keys, no spaces and UTF-8 text.

    Computed from the envelope as it travels (``Event.to_envelope()`` on the way out, the
    received JSON object on the way in), so that a receiver checks exactly what arrived.

    >>> from celery_events.envelope import signing_input
    >>> signing_input({"id": "1", "type": "a.b", "data": {"b": 1, "a": "é"}, "signature": "x"})
    b'{"data":{"a":"\xc3\xa9","b":1},"id":"1","type":"a.b"}'
    """
    signed = {
        key: value
        for key, value in envelope.items()
        if value is not None and key not in SIGNATURE_ATTRIBUTES
    }
    # A lone surrogate (JSON's "\\ud800", which Python reads as such) has no UTF-8 form;
    # "surrogatepass" encodes it the same way on both sides rather than failing.
    return _CANONICAL.encode(signed).encode("utf-8", "surrogatepass")


# Made once: json.dumps with options builds a new encoder on every call.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def _check_content_type(value: object) -> None:
    if value is None or value == DATACONTENTTYPE:
        return
    if not (isinstance(value, str) and _JSON_MEDIA_TYPE_RE.match(value)):
        raise InvalidEnvelope(
            f"The envelope's datacontenttype is {value!r}; an event's data is a JSON object,"
            " so it must be a JSON media type (application/json) or absent."
        )


def _parse_rfc3339(text: str) -> datetime:
    # Every RFC 3339 form that fromisoformat does not take (Python 3.10 takes fewer): 't' and
    # 'z' in lowercase, fractions of any length (kept to the microsecond).
    match = _RFC3339_RE.match(text)
    if match is None:
        raise InvalidEnvelope(f"The envelope's time {text!r} is not an RFC 3339 timestamp.")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    try:
        if zulu:
            zone = timezone.utc
        else:
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            zone = timezone(-offset if sign == "-" else offset)  # raises past 24 hours
        return datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second),
            int((fraction or "0")[:6].ljust(6, "0")), tzinfo=zone,
        )
    except ValueError as exc:
        raise InvalidEnvelope(
            f"The envelope's time {text!r} is not an RFC 3339 timestamp: {exc}."
        ) from None


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
