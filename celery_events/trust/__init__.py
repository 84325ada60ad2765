"""Trust between services: signed events, publish and subscribe scopes, encrypted fields.

Everything here is configured by each service's own settings and never read from the shared
registry (which anyone with broker access could write). The bus builds the middleware from
its settings and puts it innermost on its chain (:func:`middleware_for`), so that:

- on publish, scopes are checked first, sensitive fields are encrypted, and the signature is
  made last, over exactly what goes on the wire (every extension other middleware added
  included);
- on receipt (receive hooks run innermost first), the signature is checked first, before the
  inbox and the handler, then the verified source's scope, then fields are decrypted for the
  handler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigurationError
from .keys import (
    ED25519,
    HMAC_SHA256,
    Keyring,
    SigningKey,
    VerificationKey,
    generate_ed25519,
    generate_hmac,
    load_signing_key,
    load_trusted_keys,
)

if TYPE_CHECKING:
    from ..middleware.base import Middleware
    from ..settings import Settings

__all__ = [
    "ED25519",
    "HMAC_SHA256",
    "Keyring",
    "SigningKey",
    "VerificationKey",
    "generate_ed25519",
    "generate_hmac",
    "load_signing_key",
    "load_trusted_keys",
    "keyring_for",
    "middleware_for",
]


def keyring_for(service: str, settings: Settings) -> Keyring | None:
    """The keyring of ``service`` from its ``signing_key`` and ``trusted_keys`` settings, or
    None when neither is set (signing is off)."""
    if settings.signing_key is None and settings.trusted_keys is None:
        return None
    signing = None if settings.signing_key is None else load_signing_key(service, settings.signing_key)
    return Keyring(signing, load_trusted_keys(settings.trusted_keys))


def middleware_for(service: str, settings: Settings) -> list[Middleware]:
    """The trust middleware the settings of ``service`` ask for, outermost first; empty when
    no trust setting is set."""
    from .scopes import Scopes, policy_for

    if settings.encryption_key_id is not None and settings.encryption_keys is None:
        raise ConfigurationError(
            f"The setting encryption_key_id is {settings.encryption_key_id!r} but"
            " encryption_keys is not set; give the keys (a directory of {key_id}.aes files)."
        )
    found: list[Middleware] = []
    policy = policy_for(settings)
    if policy is not None:
        # Outermost of the trust middleware: a refused publish costs no encryption or
        # signature; on receipt it runs last, on the verified (and decrypted) event.
        found.append(Scopes(service, policy))
    if settings.encryption_keys is not None:
        from .sensitive import SensitiveFields, load_encryption_keys

        found.append(
            SensitiveFields(
                load_encryption_keys(settings.encryption_keys, settings.encryption_key_id)
            )
        )
    return found
