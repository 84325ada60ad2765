"""Sensitive fields: masked wherever arguments are shown, encrypted on the wire when keyed.

A field is named by a dotted path into the event's data (``"email"``, ``"address.street"``).
A list met on the way applies the rest of the path to each of its items, as MongoDB's dot
notation does (``"cards.number"`` names the ``number`` of every card); a path that ends at a
list names the whole list. A path that is not in an event's data is skipped: fields may be
optional.

Two declarations name fields, and they do different things:

- **the publisher's** (``bus.declare(name, sensitive=[...])``) travels with each event, as the
  extension attribute ``sensitive`` (the paths, comma-separated). It decides what is
  encrypted (when the publisher has ``encryption_keys``) and what every subscriber masks.
- **a subscriber's** (``@bus.subscribe(..., sensitive=[...])``) masks those fields too in the
  argument text its worker shows (Celery's log lines, Flower's rows, its retries), even when
  the publisher declared nothing. It cannot encrypt what was already sent in clear.

Masking replaces each field's value with ``"***"`` in the task message's ``argsrepr`` header,
which is the argument text Celery's worker logs, its task events, Flower and ``celery
inspect`` show. A publish masks once per event, for all its deliveries.

Encryption (AES-256-GCM through ``cryptography``) replaces each field's value in the data with
the text ``"enc:v1:{key_id}:{base64 of nonce + ciphertext + tag}"``: the value's JSON,
encrypted with a fresh random 96-bit nonce, with the event's id and the field's location
(``"cards.0.number"``) as associated data, so that a ciphertext moved to another event or field
does not decrypt. The data stays a JSON object, so queues, the delivery ledger, retries and
dead letters only ever hold the ciphertext; the subscriber's receive hook decrypts a copy for
the handler. A delivery whose field does not decrypt (a key id the subscriber does not have,
a changed ciphertext, a subscriber without ``encryption_keys``) is dead-lettered unrun with the
reason ``undecryptable``; it can be replayed once the key is there.

Keys are symmetric: every service that publishes or handles a sensitive event holds the same
key set. Several keys may be held at once; each ciphertext names the key that made it, and the
``encryption_key_id`` setting picks the one that encrypts (by default the greatest key id,
which for ids made by :func:`new_aes_key_id` is the newest).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..deadletters import Reason
from ..envelope import Event
from ..errors import ConfigurationError, DeliveryRefused, shown
from ..middleware.base import REPLAY, Middleware, PublishCall, PublishNext, Receipt
from ..results import PublishResult
from .fields import (
    ENCRYPTED_PREFIX,
    MASK,
    SENSITIVE,
    check_paths,
    is_encrypted,
    mask_data,
    mask_envelope,
    paths_of,
    still_encrypted,
    transform,
)

__all__ = [
    "SENSITIVE",
    "MASK",
    "ENCRYPTED_PREFIX",
    "EncryptionKeys",
    "SensitiveFields",
    "check_paths",
    "paths_of",
    "mask_data",
    "mask_envelope",
    "load_encryption_keys",
    "generate_aes_key",
    "new_aes_key_id",
    "write_aes_key",
    "still_encrypted",
    "refuse_encrypted",
]

_KEY_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_KEY_BYTES = 32
_NONCE_BYTES = 12
# Binds a ciphertext to this use (and version) besides its event and field.
_AAD_PREFIX = b"celery-events/enc/v1\x00"


# -- keys --------------------------------------------------------------------------------


def _aesgcm() -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:  # pragma: no cover - the extra is missing
        raise ConfigurationError(
            "Encrypted fields need the 'cryptography' package: pip install"
            " 'celery-events[trust]'."
        ) from None
    return AESGCM


def generate_aes_key() -> bytes:
    """A new random AES-256 key (32 bytes)."""
    return os.urandom(_KEY_BYTES)


def new_aes_key_id() -> str:
    """A fresh key id that sorts after the ids made before it: the date and time, and some
    randomness (so the default ``encryption_key_id``, the greatest, is the newest key)."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "-" + os.urandom(3).hex()


def write_aes_key(directory: str | os.PathLike[str], key_id: str | None = None) -> Path:
    """Write a new key as ``{directory}/{key_id}.aes`` (base64, readable by its owner only)
    and return its path; ``celery eventbus keys generate --aes`` is this."""
    key_id = new_aes_key_id() if key_id is None else key_id
    if not _KEY_ID_RE.match(key_id):
        raise ConfigurationError(
            f"{key_id!r} cannot be a key id; use letters, digits, '_' and '-' (at most 64)."
        )
    path = Path(directory) / f"{key_id}.aes"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(base64.b64encode(generate_aes_key()).decode("ascii") + "\n")
    return path


def _key_bytes(text: object, where: str) -> bytes:
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if not isinstance(text, str):
        raise ConfigurationError(f"The encryption key {where} must be base64 text, not {shown(text)}.")
    try:
        raw = base64.b64decode(text.strip().encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ConfigurationError(
            f"The encryption key {where} is not base64; make one with `celery eventbus keys"
            " generate --aes`."
        ) from None
    if len(raw) != _KEY_BYTES:
        raise ConfigurationError(
            f"The encryption key {where} is {len(raw)} bytes; an AES-256 key is {_KEY_BYTES}"
            " bytes (44 characters of base64)."
        )
    return raw


def _check_key_id(key_id: object, where: str) -> str:
    if not isinstance(key_id, str) or not _KEY_ID_RE.match(key_id):
        raise ConfigurationError(
            f"{where}: {shown(key_id)} cannot be a key id; use letters, digits, '_' and '-'."
        )
    return key_id


class EncryptionKeys:
    """The AES-256 keys of a service, by id, and the id of the one that encrypts.

    >>> from celery_events.trust.sensitive import EncryptionKeys
    >>> keys = EncryptionKeys({"k1": bytes(32)})
    >>> text = keys.encrypt("a@b.c", "event-1", "email")
    >>> text.startswith("enc:v1:k1:"), keys.decrypt(text, "event-1", "email")
    (True, 'a@b.c')
    """

    def __init__(self, keys: Mapping[str, bytes], encrypting: str | None = None) -> None:
        if not keys:
            raise ConfigurationError(
                "The setting encryption_keys holds no key; add a {key_id}.aes file (`celery"
                " eventbus keys generate --aes`) or an entry {key_id: base64 key}."
            )
        aesgcm = _aesgcm()
        from cryptography.exceptions import InvalidTag

        self._invalid_tag = InvalidTag
        self._ciphers = {key_id: aesgcm(raw) for key_id, raw in keys.items()}
        chosen = max(keys) if encrypting is None else encrypting
        if chosen not in self._ciphers:
            raise ConfigurationError(
                f"The setting encryption_key_id is {chosen!r}, which is not one of the keys in"
                f" encryption_keys ({', '.join(sorted(keys))})."
            )
        #: The id of the key that encrypts.
        self.key_id = chosen
        self._encrypting = self._ciphers[chosen]
        self._prefix = f"{ENCRYPTED_PREFIX}{chosen}:"

    @property
    def key_ids(self) -> list[str]:
        """Every key id that decrypts, sorted."""
        return sorted(self._ciphers)

    @staticmethod
    def _aad(event_id: str, where: str) -> bytes:
        return _AAD_PREFIX + event_id.encode() + b"\x00" + where.encode()

    def encrypt(self, value: Any, event_id: str, where: str) -> str:
        """``value`` (anything JSON holds) encrypted for the field ``where`` of ``event_id``."""
        nonce = os.urandom(_NONCE_BYTES)
        plain = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
        sealed = self._encrypting.encrypt(nonce, plain, self._aad(event_id, where))
        return self._prefix + base64.b64encode(nonce + sealed).decode("ascii")

    def decrypt(self, text: str, event_id: str, where: str) -> Any:
        """The value :meth:`encrypt` encrypted, or :class:`ValueError` saying why not."""
        _, _, rest = text.partition(ENCRYPTED_PREFIX)
        key_id, sep, payload = rest.partition(":")
        cipher = self._ciphers.get(key_id)
        if not sep or cipher is None:
            raise ValueError(
                f"it was encrypted with the key {key_id!r}, which is not among this service's"
                f" encryption_keys ({', '.join(self.key_ids)})"
            )
        try:
            raw = base64.b64decode(payload.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise ValueError("its ciphertext is not base64") from None
        if len(raw) < _NONCE_BYTES + 16:
            raise ValueError("its ciphertext is too short")
        try:
            plain = cipher.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], self._aad(event_id, where))
        except self._invalid_tag:
            raise ValueError(
                f"its ciphertext does not verify with the key {key_id!r} for this event and"
                " field (changed, or moved from another event or field)"
            ) from None
        return json.loads(plain)


def load_encryption_keys(spec: object, encrypting: object = None) -> EncryptionKeys:
    """The keys of the ``encryption_keys`` setting: a directory of ``{key_id}.aes`` files, one
    such file, a list of files and directories, or a mapping ``{key_id: base64 key}``;
    ``encrypting`` is the ``encryption_key_id`` setting (None: the greatest key id)."""
    chosen = None if encrypting is None else _check_key_id(encrypting, "The setting encryption_key_id")
    keys: dict[str, bytes] = {}
    if isinstance(spec, Mapping):
        for key_id, text in spec.items():
            keys[_check_key_id(key_id, "The setting encryption_keys")] = _key_bytes(text, f"{key_id!r}")
        return EncryptionKeys(keys, chosen)
    items = [spec] if isinstance(spec, (str, os.PathLike)) else spec
    if not isinstance(items, (list, tuple)):
        raise ConfigurationError(
            "The setting encryption_keys must be a directory of {key_id}.aes files, a list of"
            f" files and directories, or {{key_id: base64 key}}, not {shown(spec)}."
        )
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise ConfigurationError(
                f"The setting encryption_keys lists {shown(item)}, which is not a path."
            )
        path = Path(item)
        files = sorted(path.glob("*.aes")) if path.is_dir() else [path]
        if path.is_dir() and not files:
            raise ConfigurationError(
                f"The encryption key directory {str(path)!r} holds no .aes file; make one with"
                " `celery eventbus keys generate --aes`."
            )
        for file in files:
            if file.suffix != ".aes":
                raise ConfigurationError(
                    f"The encryption key file {str(file)!r} must be named {{key_id}}.aes."
                )
            key_id = _check_key_id(file.stem, f"The encryption key file {str(file)!r}")
            try:
                text = file.read_text("ascii")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigurationError(
                    f"Cannot read the encryption key file {str(file)!r}: {exc}."
                ) from None
            keys[key_id] = _key_bytes(text, str(file))
    return EncryptionKeys(keys, chosen)


# -- the middleware ----------------------------------------------------------------------


class SensitiveFields(Middleware):
    """Encrypts an event's sensitive fields on publish and decrypts them for the handler.

    On the bus's chain between the scopes and the signing (:func:`~celery_events.trust
    .middleware_for`), when the service has ``encryption_keys``: what is signed is the
    ciphertext, and a signature is checked before anything is decrypted. A dead letter's replay
    (which holds the ciphertext already) is sent as it is.
    """

    def __init__(self, keys: EncryptionKeys) -> None:
        self.keys = keys

    def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
        event = call.event
        paths = event.extensions.get(SENSITIVE)
        if call.origin == REPLAY or not isinstance(paths, str) or not paths:
            return call_next(call)
        keys, event_id = self.keys, event.id

        def seal(value: Any, where: str) -> Any:
            return keys.encrypt(value, event_id, where)

        data = transform(event.data, paths.split(","), seal)
        if data is event.data:
            return call_next(call)
        return call_next(call.with_event(_with_data(event, data)))

    def receive(self, receipt: Receipt) -> Receipt:
        event = receipt.event
        paths = paths_of(receipt.envelope)
        if not paths:
            return receipt
        keys, event_id = self.keys, event.id

        def unseal(value: Any, where: str) -> Any:
            if not is_encrypted(value):
                return value
            try:
                return keys.decrypt(value, event_id, where)
            except ValueError as exc:
                raise DeliveryRefused(
                    f"The sensitive field {where!r} of event {event_id} could not be decrypted:"
                    f" {exc}. Add the key to encryption_keys, then replay the dead letter.",
                    reason=Reason.UNDECRYPTABLE,
                ) from None

        data = transform(event.data, paths, unseal)
        if data is event.data:
            return receipt
        return receipt.with_event(_with_data(event, data))


def refuse_encrypted(event: Event, envelope: Mapping[str, Any]) -> None:
    """Raise :class:`DeliveryRefused` (``undecryptable``) if a sensitive field of ``event``
    still holds a ciphertext: this service has no ``encryption_keys`` to read it with."""
    where = still_encrypted(event, paths_of(envelope))
    if where is not None:
        raise DeliveryRefused(
            f"The sensitive field {where!r} of event {event.id} is encrypted and this service"
            " has no encryption_keys to decrypt it with. Set encryption_keys, then replay the"
            " dead letter.",
            reason=Reason.UNDECRYPTABLE,
        )


def _with_data(event: Event, data: dict[str, Any]) -> Event:
    return replace(event, data=data)

