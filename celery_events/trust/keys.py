"""Signing keys and the keyring of one service: whose signatures it trusts.

Two algorithms, both through ``cryptography``:

- **Ed25519** (the default): each service has a private key only it holds and publishes its
  public key; a subscriber trusts the public keys of the services it hears from. No
  subscriber can sign as a publisher.
- **HMAC-SHA256**, for a team with one shared secret: every holder of the secret can sign as
  every service the secret is trusted for, so it separates teams, not services.

Every key has an id, sent with each signature (``signaturekeyid``), so a service may have
several verification keys at once: keys rotate by trusting the new public key everywhere,
then signing with the new private key, then removing the old public key.

Keys live in files named ``{service}.{key_id}.key`` (an Ed25519 private key, PEM),
``{service}.{key_id}.pub`` (its public key, PEM) and ``{service}.{key_id}.hmac`` (a shared
secret, base64); ``celery eventbus keys generate`` writes them. A directory of such files is a
set of trusted keys. Settings may instead give the keys inline, as a mapping
``{service: {key_id: text}}`` whose texts are PEM, or ``hmac:`` and a base64 secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, InvalidSignature, shown

__all__ = [
    "ED25519",
    "HMAC_SHA256",
    "SigningKey",
    "VerificationKey",
    "Keyring",
    "generate_ed25519",
    "generate_hmac",
    "load_signing_key",
    "load_trusted_keys",
    "b64encode",
    "b64decode",
]

ED25519 = "ed25519"
HMAC_SHA256 = "hmac-sha256"

#: A key id: letters, digits, ``_`` and ``-`` (it is part of a file name and of each signature).
KEY_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_SERVICE_RE = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")
_FILE_RE = re.compile(r"(?P<service>[a-z0-9][a-z0-9_-]*)\.(?P<key_id>[A-Za-z0-9_-]{1,64})\.(?P<kind>key|pub|hmac)\Z")
_HMAC_PREFIX = "hmac:"
#: The shortest shared secret accepted: 256 bits, the size of the HMAC-SHA256 block's hash.
MIN_SECRET_BYTES = 32


def b64encode(raw: bytes) -> str:
    """Base64 (standard alphabet, padded): how signatures travel in an envelope."""
    return base64.b64encode(raw).decode("ascii")


def b64decode(text: object) -> bytes:
    """The bytes of a base64 text, or raise :class:`ValueError`."""
    if not isinstance(text, str):
        raise ValueError(f"{shown(text)} is not a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"{shown(text)} is not base64 ({exc})") from None


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - the extra is missing
        raise ConfigurationError(
            "Signed events need the 'cryptography' package: pip install 'celery-events[trust]'."
        ) from None
    return serialization, ed25519


@dataclass(frozen=True)
class VerificationKey:
    """A key that checks the signatures of one service (a public key, or a shared secret)."""

    service: str
    key_id: str
    algorithm: str
    _material: Any = field(repr=False, compare=False)
    # libsodium's Ed25519 check (PyNaCl, in the trust extra) takes half the time of
    # OpenSSL's here (60 µs against 120 µs), and every delivery pays one: used when present.
    _sodium: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.algorithm != ED25519:
            return
        try:
            from nacl.signing import VerifyKey
        except ImportError:  # pragma: no cover - cryptography alone checks it
            return
        serialization, _ = _crypto()
        raw = self._material.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        object.__setattr__(self, "_sodium", VerifyKey(raw))

    def fingerprint(self) -> str:
        """A short digest that names the key without showing it: SHA-256 of the raw public
        key (Ed25519) or of the secret (HMAC), its first 16 bytes in hex, colon-separated."""
        if self.algorithm == HMAC_SHA256:
            raw = b"celery-events hmac key\0" + self._material
        else:
            serialization, _ = _crypto()
            raw = self._material.public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        digest = hashlib.sha256(raw).hexdigest()[:32]
        return ":".join(digest[i : i + 4] for i in range(0, 32, 4))

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is this key's signature of ``message``."""
        if self.algorithm == HMAC_SHA256:
            expected = hmac.new(self._material, message, hashlib.sha256).digest()
            return hmac.compare_digest(expected, signature)
        sodium = self._sodium
        try:
            if sodium is not None:
                sodium.verify(message, signature)
            else:
                self._material.verify(signature, message)
        except Exception:  # InvalidSignature / BadSignatureError, or a wrong length
            return False
        return True


@dataclass(frozen=True)
class SigningKey:
    """The key a service signs with (a private key, or a shared secret)."""

    service: str
    key_id: str
    algorithm: str
    _material: Any = field(repr=False, compare=False)
    # libsodium (PyNaCl, in the trust extra) signs in about 60 % of OpenSSL's time here, and
    # every published event pays one. Ed25519 signatures are deterministic (RFC 8032): both
    # make the same bytes, so a subscriber cannot tell which one signed.
    _sodium: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.algorithm != ED25519:
            return
        try:
            from nacl.bindings import crypto_sign, crypto_sign_seed_keypair
        except ImportError:  # pragma: no cover - cryptography alone signs
            return
        serialization, _ = _crypto()
        seed = self._material.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        # libsodium's secret key: the seed and the public key (what crypto_sign takes).
        secret = crypto_sign_seed_keypair(seed)[1]

        def sign(message: bytes) -> bytes:
            # The signed message: the 64 bytes of the signature, then the message.
            signed: bytes = crypto_sign(message, secret)[:64]
            return signed

        object.__setattr__(self, "_sodium", sign)

    def sign(self, message: bytes) -> bytes:
        """The signature of ``message``."""
        if self.algorithm == HMAC_SHA256:
            return hmac.new(self._material, message, hashlib.sha256).digest()
        if self._sodium is not None:
            signed: bytes = self._sodium(message)
            return signed
        signature: bytes = self._material.sign(message)
        return signature

    def verification_key(self) -> VerificationKey:
        """The key that checks this key's signatures."""
        if self.algorithm == HMAC_SHA256:
            return VerificationKey(self.service, self.key_id, self.algorithm, self._material)
        return VerificationKey(
            self.service, self.key_id, self.algorithm, self._material.public_key()
        )


def _same_key(a: VerificationKey, b: VerificationKey) -> bool:
    if a.algorithm != b.algorithm:
        return False
    if a.algorithm == HMAC_SHA256:
        return hmac.compare_digest(a._material, b._material)
    return bool(a.fingerprint() == b.fingerprint())


class Keyring:
    """The keys one service works with: its own signing key (if it signs) and the
    verification keys of every service it trusts, several per service during a rotation.

    >>> from celery_events.trust import Keyring, generate_hmac, load_signing_key, load_trusted_keys
    >>> secret = generate_hmac().decode()          # shared by orders and those who trust it
    >>> signing = load_signing_key("orders", {"key_id": "2026-01", "key": secret})
    >>> ring = Keyring(signing, load_trusted_keys({"orders": {"2026-01": secret}}))
    >>> key_id, signature = ring.sign(b"message")
    >>> key_id
    '2026-01'
    >>> ring.verify("orders", key_id, b"message", signature)    # returns, or raises InvalidSignature
    """

    def __init__(
        self, signing_key: SigningKey | None, trusted: Iterable[VerificationKey] = ()
    ) -> None:
        self.signing_key = signing_key
        keys: dict[tuple[str, str], VerificationKey] = {}
        for key in trusted:
            keys[(key.service, key.key_id)] = key
        if signing_key is not None:
            # A service always trusts its own key (its replays, its own registry record).
            own = signing_key.verification_key()
            found = keys.setdefault((signing_key.service, signing_key.key_id), own)
            if found is not own and not _same_key(found, own):
                raise ConfigurationError(
                    f"The trusted key {signing_key.service}/{signing_key.key_id} is not the"
                    " public key of the signing key of the same id: the service's own"
                    " events would fail their check. Trust the .pub file generated with the"
                    " signing key."
                )
        self._keys = keys
        self._owners: dict[str, list[str]] = {}
        for service, key_id in keys:
            self._owners.setdefault(key_id, []).append(service)

    def __iter__(self) -> Iterator[VerificationKey]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        signing = None if self.signing_key is None else f"{self.signing_key.service}/{self.signing_key.key_id}"
        trusted = sorted(f"{s}/{k}" for s, k in self._keys)
        return f"Keyring(signing={signing}, trusted={trusted})"

    def services(self) -> frozenset[str]:
        """The services this keyring has at least one verification key of."""
        return frozenset(service for service, _ in self._keys)

    def sign(self, message: bytes) -> tuple[str, str]:
        """``(key_id, base64 signature)`` of ``message`` with this service's signing key."""
        if self.signing_key is None:
            raise ConfigurationError(
                "This service has no signing key; set the signing_key setting to its private"
                " key file (celery eventbus keys generate writes one)."
            )
        return self.signing_key.key_id, b64encode(self.signing_key.sign(message))

    def verify(self, service: str, key_id: object, message: bytes, signature: object) -> None:
        """Return if ``signature`` is a valid signature of ``message`` by ``service`` with key
        ``key_id``; raise :class:`InvalidSignature` saying what is wrong otherwise."""
        if signature is None or signature == "":
            raise InvalidSignature(f"The event is not signed; events from {service!r} must be.")
        if not isinstance(key_id, str) or not key_id:
            raise InvalidSignature(
                f"The event's signature names no key id (signaturekeyid is {shown(key_id)})."
            )
        key = self._keys.get((service, key_id))
        if key is None:
            owners = self._owners.get(key_id)
            if owners:
                raise InvalidSignature(
                    f"The event's source is {service!r} but it is signed with key {key_id!r}"
                    f" of {', '.join(sorted(owners))}: a service signs only as itself."
                )
            raise InvalidSignature(
                f"The event is signed with key {key_id!r}, which is not a trusted key of"
                f" {service!r}; add its public key to trusted_keys (a key being rotated in"
                " must be trusted before it signs)."
            )
        try:
            raw = b64decode(signature)
        except ValueError as exc:
            raise InvalidSignature(f"The event's signature is unreadable: {exc}.") from None
        if not key.verify(message, raw):
            # Key ids are chosen per service and may repeat across services ("v1"): name the
            # service whose key of that id made the signature, if one did.
            for owner in self._owners.get(key_id, ()):
                if owner != service and self._keys[(owner, key_id)].verify(message, raw):
                    raise InvalidSignature(
                        f"The event's source is {service!r} but it is signed with key"
                        f" {key_id!r} of {owner}: a service signs only as itself."
                    )
            raise InvalidSignature(
                f"The event's signature does not match its content for key {service}/{key_id}:"
                " it was changed after it was signed, or signed with another key."
            )


# -- generating --------------------------------------------------------------------------


def new_key_id() -> str:
    """A fresh key id: the date and some randomness, so that ids never repeat."""
    import time

    return time.strftime("%Y%m%d") + "-" + os.urandom(3).hex()


def generate_ed25519() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair as ``(private PEM, public PEM)``."""
    serialization, ed25519 = _crypto()
    private = ed25519.Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def generate_hmac() -> bytes:
    """A new shared secret, as the base64 text a ``.hmac`` file holds."""
    return base64.b64encode(os.urandom(MIN_SECRET_BYTES)) + b"\n"


# -- loading -----------------------------------------------------------------------------


def _secret(text: bytes, where: str) -> bytes:
    """The shared secret a ``.hmac`` file (or an inline ``hmac:`` text) holds."""
    body = text.decode("ascii", "replace").strip()
    body = body[len(_HMAC_PREFIX):] if body.startswith(_HMAC_PREFIX) else body
    try:
        secret = b64decode(body.strip())
    except ValueError as exc:
        raise ConfigurationError(f"The shared secret {where} is not base64: {exc}.") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"The shared secret {where} is {len(secret)} bytes; use at least"
            f" {MIN_SECRET_BYTES} random bytes (celery eventbus keys generate --hmac)."
        )
    return secret


def _check_names(service: object, key_id: object, where: str) -> None:
    if not isinstance(service, str) or not _SERVICE_RE.match(service):
        raise ConfigurationError(f"{where}: {shown(service)} is not a service name.")
    if not isinstance(key_id, str) or not KEY_ID_RE.match(key_id):
        raise ConfigurationError(
            f"{where}: {shown(key_id)} is not a key id (letters, digits, '_' and '-', at most"
            " 64)."
        )


def _is_secret(text: bytes, kind: str | None, where: str) -> bool:
    """Whether ``text`` is a shared secret (else PEM); a file's kind (``key``, ``pub``,
    ``hmac``) must match what it holds, so a secret is never taken for a key or the reverse."""
    stripped = text.lstrip()
    secret = stripped.startswith(_HMAC_PREFIX.encode()) or not stripped.startswith(b"-----")
    if kind == "hmac" and not secret:
        raise ConfigurationError(
            f"The file {where} is named .hmac but holds PEM; a .hmac file holds a base64"
            " shared secret (celery eventbus keys generate --hmac writes one)."
        )
    if kind in ("key", "pub") and secret:
        what = "an Ed25519 private key" if kind == "key" else "an Ed25519 public key"
        raise ConfigurationError(
            f"The file {where} is named .{kind} but does not hold PEM; a .{kind} file holds"
            f" {what} (celery eventbus keys generate writes one), a shared secret goes in a"
            " .hmac file."
        )
    return secret


def _private_key(
    service: str, key_id: str, text: bytes, where: str, kind: str | None = None
) -> SigningKey:
    if _is_secret(text, kind, where):
        return SigningKey(service, key_id, HMAC_SHA256, _secret(text, where))
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(text, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"The signing key {where} is not a PEM private key: {exc}.") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigurationError(
            f"The signing key {where} is a {type(key).__name__}; only Ed25519 keys sign"
            " events (celery eventbus keys generate writes one)."
        )
    return SigningKey(service, key_id, ED25519, key)


def _public_key(
    service: str, key_id: str, text: bytes, where: str, kind: str | None = None
) -> VerificationKey:
    stripped = text.lstrip()
    if _is_secret(text, kind, where):
        return VerificationKey(service, key_id, HMAC_SHA256, _secret(text, where))
    serialization, ed25519 = _crypto()
    if b"PRIVATE KEY" in stripped[:64]:
        raise ConfigurationError(
            f"The trusted key {where} is a private key; trust the public key (the .pub file)"
            " and keep the private key with its service alone."
        )
    try:
        key = serialization.load_pem_public_key(text)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"The trusted key {where} is not a PEM public key: {exc}.") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigurationError(
            f"The trusted key {where} is a {type(key).__name__}; only Ed25519 public keys (or"
            " HMAC secrets) verify events."
        )
    return VerificationKey(service, key_id, ED25519, key)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"Cannot read the {what} {str(path)!r}: {exc.strerror or exc}.") from None


def load_signing_key(service: str, spec: object) -> SigningKey:
    """The signing key of ``service`` from the ``signing_key`` setting: the path of a
    ``{service}.{key_id}.key`` or ``.hmac`` file, or a mapping ``{"key_id": ..., "key": text}``."""
    if isinstance(spec, Mapping):
        key_id, text = spec.get("key_id"), spec.get("key")
        _check_names(service, key_id, "The signing_key setting")
        if not isinstance(text, (str, bytes)) or not text:
            raise ConfigurationError(
                "The signing_key setting's 'key' must be the key's text (PEM, or hmac: and a"
                " base64 secret)."
            )
        raw = text.encode() if isinstance(text, str) else text
        return _private_key(service, str(key_id), raw, "in the signing_key setting")
    if not isinstance(spec, (str, os.PathLike)):
        raise ConfigurationError(
            f"The signing_key setting must be the path of a key file such as"
            f" '/etc/celery-events/{service}.<key id>.key', or a mapping with key_id and key,"
            f" not {shown(spec)}."
        )
    path = Path(spec)
    match = _FILE_RE.match(path.name)
    if match is None or match["kind"] == "pub":
        raise ConfigurationError(
            f"The signing key file {str(path)!r} must be named {service}.<key id>.key (Ed25519)"
            f" or {service}.<key id>.hmac (a shared secret), as celery eventbus keys generate"
            " names it."
        )
    if match["service"] != service:
        raise ConfigurationError(
            f"The signing key file {str(path)!r} is a key of service {match['service']!r}, not"
            f" of {service!r}: each service signs with its own key."
        )
    return _private_key(
        service, match["key_id"], _read(path, "signing key file"), repr(str(path)), match["kind"]
    )


def load_trusted_keys(spec: object) -> list[VerificationKey]:
    """The verification keys of the ``trusted_keys`` setting: a directory of ``.pub`` and
    ``.hmac`` files (other files are ignored), a list of such files and directories, or a
    mapping ``{service: {key_id: text}}``."""
    if spec is None:
        return []
    if isinstance(spec, Mapping):
        keys = []
        for service, by_id in spec.items():
            if not isinstance(by_id, Mapping):
                raise ConfigurationError(
                    f"The trusted_keys setting maps each service to {{key_id: key text}}; the"
                    f" entry of {shown(service)} is {shown(by_id)}."
                )
            for key_id, text in by_id.items():
                _check_names(service, key_id, "The trusted_keys setting")
                if not isinstance(text, (str, bytes)) or not text:
                    raise ConfigurationError(
                        f"The trusted key {service}/{key_id} must be a PEM public key or hmac:"
                        " and a base64 secret."
                    )
                raw = text.encode() if isinstance(text, str) else text
                keys.append(_public_key(service, key_id, raw, f"{service}/{key_id}"))
        return keys
    paths: list[Any] = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    keys = []
    for item in paths:
        if not isinstance(item, (str, os.PathLike)):
            raise ConfigurationError(
                "The trusted_keys setting must be a directory of key files, a list of key files"
                f" and directories, or a mapping {{service: {{key_id: key}}}}, not {shown(item)}."
            )
        path = Path(item)
        if path.is_dir():
            for file in sorted(path.iterdir()):
                if file.suffix not in (".pub", ".hmac"):
                    continue  # private keys (.key), notes, anything else
                if not _FILE_RE.match(file.name):
                    raise ConfigurationError(
                        f"The trusted key file {str(file)!r} must be named"
                        " <service>.<key id>.pub or <service>.<key id>.hmac, with the"
                        " service's name in lowercase; rename or remove it."
                    )
                keys.append(_load_file(file))
        elif not path.exists():
            raise ConfigurationError(
                f"The trusted_keys setting names {str(path)!r}, which does not exist; give a"
                " directory of .pub and .hmac files, or a list of such files."
            )
        else:
            keys.append(_load_file(path))
    return keys


def _load_file(path: Path) -> VerificationKey:
    match = _FILE_RE.match(path.name)
    if match is None or match["kind"] == "key":
        raise ConfigurationError(
            f"The trusted key file {str(path)!r} must be named <service>.<key id>.pub (an"
            " Ed25519 public key) or <service>.<key id>.hmac (a shared secret)."
        )
    return _public_key(
        match["service"],
        match["key_id"],
        _read(path, "trusted key file"),
        repr(str(path)),
        match["kind"],
    )
