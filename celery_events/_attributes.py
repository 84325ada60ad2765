"""The CloudEvents 1.0 rules for context attributes, and the immutable mapping of extensions.

An extension attribute's name is lowercase ASCII letters and digits (the spec recommends at
most 20 characters; longer names are valid and accepted). In the JSON format its value is a
JSON string, an integer or a boolean: the spec's String, URI, URI-reference, Timestamp and
Binary (base64) types all travel as strings, Integer is a whole number from -2**31 to
2**31 - 1, and there is no float, object, array or null (a JSON ``null`` means "not set").
A string may not hold control characters (U+0000-U+001F, U+007F-U+009F), unpaired surrogates
or Unicode noncharacters.

The same rules hold for what is published and for what is received, so that every envelope a
subscriber accepts can be sent again (a dead-letter replay, a relay) unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from typing import Any, TypeAlias

from .errors import InvalidEnvelope, shown

__all__ = [
    "ExtensionValue",
    "Extensions",
    "NO_EXTENSIONS",
    "adopt_extensions",
    "RESERVED",
    "MAX_ATTRIBUTES_SIZE",
    "check_attributes",
    "check_extension",
    "check_text_attribute",
]

#: What an extension attribute may hold: a string, an integer or a boolean.
ExtensionValue: TypeAlias = str | int | bool

#: The CloudEvents 1.0 core attributes (and members of the JSON format) and this project's
#: own attributes: none of them is an extension.
RESERVED = frozenset(
    {
        "specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject",
        "time", "data", "data_base64", "correlationid", "causationid",
    }
)

#: The most the extensions, ``subject`` and ``dataschema`` of one event may take together, as
#: the JSON on the wire (where a non-ASCII character takes 6 or 12 bytes). Subscribers refuse
#: a delivery whose body is larger than its data by more than 16 KiB
#: (``_screening.ENVELOPE_ALLOWANCE``); this keeps them well inside that room, next to the ids.
MAX_ATTRIBUTES_SIZE = 8 * 1024

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_NAME_RE = re.compile(r"[a-z0-9]+\Z")
_SUGGEST_RE = re.compile(r"[^a-z0-9]")
# Control characters, surrogates (json.loads makes lone ones from "\ud800") and the
# noncharacters of the first plane; those of the other planes (U+1FFFE, U+1FFFF, ...) are
# looked for apart, as a character class holding them makes every search ten times slower.
_BAD_BMP_RE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff]")


class Extensions(Mapping[str, ExtensionValue]):
    """The extension attributes of an event: an immutable mapping of name to value.

    It compares equal to a dict with the same items. Made by :class:`~celery_events.Event`
    from whatever mapping it is given; the rules are checked by ``Event.validate`` (at publish)
    and ``Event.from_envelope`` (on receipt), not here.

    >>> from celery_events._attributes import Extensions
    >>> ext = Extensions({"traceparent": "00-4bf9...-01", "priority": 2})
    >>> ext["priority"], ext == {"priority": 2, "traceparent": "00-4bf9...-01"}
    (2, True)
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, ExtensionValue] | None = None) -> None:
        if items is None:
            items = {}
        elif type(items) is not dict and not isinstance(items, Mapping):
            raise InvalidEnvelope(
                f"An event's extensions must be a mapping of attribute name to value, not"
                f" {type(items).__name__} {shown(items)}; pass a dict such as"
                " {'traceparent': '00-...'}."
            )
        self._items: dict[str, ExtensionValue] = dict(items)

    def __getitem__(self, name: str) -> ExtensionValue:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    # The held dict's own (read-only) views: Mapping's would walk it key by key in Python.
    def keys(self) -> KeysView[str]:
        return self._items.keys()

    def items(self) -> ItemsView[str, ExtensionValue]:
        return self._items.items()

    def values(self) -> ValuesView[ExtensionValue]:
        return self._items.values()

    def __repr__(self) -> str:
        return repr(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __reduce__(self) -> tuple[type[Extensions], tuple[dict[str, ExtensionValue]]]:
        return (Extensions, (self._items,))

    def as_dict(self) -> dict[str, ExtensionValue]:
        """A new plain dict of the extensions (for JSON, or to change and pass on)."""
        return dict(self._items)


#: The extensions of an event that has none; shared, so an event without costs no copy.
NO_EXTENSIONS = Extensions()


def adopt_extensions(items: dict[str, ExtensionValue]) -> Extensions:
    """Extensions holding ``items`` itself, not a copy: only for a dict that the caller just
    made and gives up (``Event.with_extensions``' merged one)."""
    found = object.__new__(Extensions)
    found._items = items
    return found


def check_attributes(
    extensions: Mapping[Any, object],
    subject: object = None,
    dataschema: object = None,
    *,
    received: bool = False,
) -> None:
    """Raise :class:`InvalidEnvelope` naming the first of an event's optional attributes that
    breaks a rule: ``subject``, ``dataschema``, each extension, then their size together.

    ``received`` words the message for an envelope read from the wire rather than an event
    being published.
    """
    # Encoded only when it might not fit: no character takes more than 12 bytes of JSON
    # (an escaped surrogate pair), no integer more than 11. The bound is summed as each
    # attribute is checked (this runs for every traceparent and signature added).
    bound = 0
    if subject is not None:
        check_text_attribute("subject", subject, received=received)
        bound += 7 + 8 + 12 * len(subject)  # type: ignore[arg-type]
    if dataschema is not None:
        check_text_attribute("dataschema", dataschema, received=received)
        bound += 10 + 8 + 12 * len(dataschema)  # type: ignore[arg-type]
    for name, value in extensions.items():
        check_extension(name, value, received=received)
        bound += len(name) + 8 + (12 * len(value) if isinstance(value, str) else 11)
    if bound > MAX_ATTRIBUTES_SIZE:
        optional = dict(extensions)
        if subject is not None:
            optional["subject"] = subject
        if dataschema is not None:
            optional["dataschema"] = dataschema
        size = len(json.dumps(optional))
        if size > MAX_ATTRIBUTES_SIZE:
            whose = "The envelope's" if received else "The event's"
            raise InvalidEnvelope(
                f"{whose} extension attributes, subject and dataschema take {size} bytes of"
                f" JSON, over the {MAX_ATTRIBUTES_SIZE} bytes an event may carry beside its"
                " data. Send large values (a certificate chain, a document) as data or by"
                " reference."
            )


def check_extension(name: object, value: object, *, received: bool = False) -> None:
    """Raise :class:`InvalidEnvelope` unless ``name`` and ``value`` make a valid extension."""
    if (
        type(value) is str
        and value.isascii()
        and value.isprintable()
        and type(name) is str
        and name not in RESERVED
        and _NAME_RE.match(name)
    ):
        # Most attributes (a traceparent, a signature, ids): the tests below, in one line.
        return
    whose = "The envelope's" if received else "The event's"
    if not isinstance(name, str) or not _NAME_RE.match(name):
        suggestion = _SUGGEST_RE.sub("", name.lower()) if isinstance(name, str) else ""
        hint = f" such as {suggestion!r}" if suggestion and suggestion not in RESERVED else ""
        raise InvalidEnvelope(
            f"{whose} extension attribute name {shown(name)} is not valid: CloudEvents"
            f" attribute names are lowercase ASCII letters and digits only{hint}."
        )
    if name in RESERVED:
        fix = {
            "correlationid": " Pass correlation_id=... instead.",
            "causationid": " Pass causation_id=... instead.",
            "subject": " Pass subject=... instead.",
            "dataschema": " Pass dataschema=... instead.",
        }.get(name, "")
        raise InvalidEnvelope(
            f"{whose} extensions name {name!r}, which is a CloudEvents core attribute or one"
            f" of this bus's own, not an extension.{fix}"
        )
    if value is None:
        raise InvalidEnvelope(
            f"{whose} extension attribute {name!r} is None; an extension that is not set is"
            " left out."
        )
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise InvalidEnvelope(
                f"{whose} extension attribute {name!r} is {value}, outside the CloudEvents"
                f" Integer range ({_INT_MIN} to {_INT_MAX}). Send it as a string."
            )
        return
    if isinstance(value, str):
        bad = _bad_char(value)
        if bad is not None:
            raise InvalidEnvelope(
                f"{whose} extension attribute {name!r} holds the character"
                f" U+{ord(value[bad]):04X} at position {bad}; CloudEvents strings may"
                " not hold control characters, unpaired surrogates or noncharacters."
                " Encode the value (base64, percent-encoding) first."
            )
        return
    kind = "a float" if isinstance(value, float) else type(value).__name__
    raise InvalidEnvelope(
        f"{whose} extension attribute {name!r} is {kind} ({shown(value)}); CloudEvents"
        " extension values are strings, integers or booleans. Convert it to a string"
        " (a timestamp with .isoformat(), bytes with base64)."
    )


def check_text_attribute(attribute: str, value: object, *, received: bool = False) -> None:
    """Raise :class:`InvalidEnvelope` unless ``value`` fits ``subject`` or ``dataschema``.

    Both are optional (None); when set, a non-empty string of allowed characters;
    ``dataschema`` is an absolute URI (it has a scheme).
    """
    if value is None:
        return
    whose = "The envelope's" if received else "The event's"
    if not isinstance(value, str) or not value:
        raise InvalidEnvelope(
            f"{whose} {attribute} must be a non-empty string or None, not {shown(value)}"
            f" ({type(value).__name__})."
        )
    bad = _bad_char(value)
    if bad is not None:
        raise InvalidEnvelope(
            f"{whose} {attribute} holds the character U+{ord(value[bad]):04X} at position"
            f" {bad}; CloudEvents strings may not hold control characters, unpaired"
            " surrogates or noncharacters."
        )
    if attribute == "dataschema" and (
        not _URI_RE.match(value) or any(c.isspace() for c in value)
    ):
        raise InvalidEnvelope(
            f"{whose} dataschema {shown(value)} is not an absolute URI; CloudEvents wants one"
            " with a scheme, such as 'https://example.com/schemas/order-placed/1.json'."
        )


_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:.")


def _bad_char(text: str) -> int | None:
    """The position of the first character a CloudEvents string may not hold, or None."""
    if text.isascii() and text.isprintable():
        return None  # most values (ids, trace contexts, base64): one C call each
    found = _BAD_BMP_RE.search(text)
    if found is not None:
        return found.start()
    if text and max(text) > "\uffff":
        for position, char in enumerate(text):
            if ord(char) > 0xFFFF and ord(char) & 0xFFFE == 0xFFFE:
                return position
    return None


