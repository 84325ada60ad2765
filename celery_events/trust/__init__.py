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

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
    from .scopes import Policy, PublishGuard

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
    "Trust",
    "trust_for",
    "keyring_for",
    "middleware_for",
    "replay_check",
    "check_worker",
]


@dataclass(frozen=True)
class Trust:
    """What the trust settings of one service make, built once with its bus
    (:func:`trust_for`)."""

    #: The trust middleware, outermost first (the bus puts it innermost on its chain).
    middleware: list[Middleware]
    #: The scopes (``None``: none set).
    policy: Policy | None
    #: The publish path's scope check and registry filter (``None``: no scopes).
    guard: PublishGuard | None
    #: The keys that sign and check events and registry records (``None``: signing off).
    keyring: Keyring | None
    #: Whether unsigned deliveries and registry records are refused.
    require_signatures: bool
    #: Checks a dead letter's envelope before a replay sends it (``None``: nothing to check).
    replay_check: Callable[[dict[str, Any]], None] | None


def trust_for(service: str, settings: Settings) -> Trust:
    """Build everything the trust settings of ``service`` ask for, loading each key once;
    raises :class:`~celery_events.ConfigurationError` for settings that cannot work."""
    from .scopes import PublishGuard, Scopes
    from .signing import Signing

    middleware = middleware_for(service, settings)
    scopes = next((m for m in middleware if isinstance(m, Scopes)), None)
    signing = next((m for m in middleware if isinstance(m, Signing)), None)
    return Trust(
        middleware=middleware,
        policy=None if scopes is None else scopes.policy,
        guard=None if scopes is None else PublishGuard(scopes),
        keyring=None if signing is None else signing.keyring,
        require_signatures=signing is not None and signing.require,
        replay_check=replay_check(middleware),
    )


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
    from .signing import Signing

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
    signing = Signing.from_settings(service, settings)
    if signing is not None:
        found.append(signing)
    return found


def replay_check(middleware: Iterable[Middleware]) -> Callable[[dict[str, Any]], None] | None:
    """What checks a dead letter's envelope before a replay sends it (a signed event too old
    for any subscriber to take), raising :class:`~celery_events.ReplayError`; None if nothing
    in ``middleware`` has such a check."""
    from ..deadletters import ReplayError
    from .signing import Signing

    checks = [m for m in middleware if isinstance(m, Signing)]
    if not checks:
        return None

    def check(envelope: dict[str, Any]) -> None:
        for signing in checks:
            problem = signing.replay_problem(envelope)
            if problem is not None:
                raise ReplayError(problem)

    return check


def check_worker(bus: Any) -> None:
    """Raise :class:`~celery_events.ConfigurationError` if the trust settings of ``bus`` do
    not fit its handlers (run before its worker consumes)."""
    from .signing import Signing

    for middleware in bus.middleware.middleware:
        if isinstance(middleware, Signing):
            middleware.check_handlers(bus.handlers)
