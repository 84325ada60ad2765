"""The trust settings of the demo's services: signing keys and scopes (one place for all three).

Each service passes ``trust_settings("<its name>")`` into its bus settings (``CELERY_EVENTS``
for Django and Flask, ``EventBus(...)`` keywords for plain Celery). In a real deployment each
service has its own copy of this configuration, with only its own private key; the policy is
never read from the shared registry, which anyone with broker access could write.

- **Signing**: each service signs what it publishes with its own Ed25519 key
  (``keys/{service}/{service}.{key id}.key``) and trusts the public keys in ``keys/public``, so
  every delivery must carry a valid signature of the service named in its ``source``.
- **Encryption**: the fields ``users`` declares sensitive (the e-mail address and the name of
  ``user.registered``) are encrypted with the key in ``keys/aes``, which the three services
  share, so Redis, Flower and dead letters never hold them in clear.
- **Scopes**: who may publish and subscribe to what. ``user.*`` and ``order.*`` names are
  protected: a service not listed here may neither publish nor subscribe to them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DATA_DIR = Path(os.environ.get("DEMO_DATA_DIR", Path(__file__).resolve().parent / "var"))
#: Where ``python -m demo_runner.keys`` put the keys (``run_demo.py`` sets it).
KEYS_DIR = Path(os.environ.get("DEMO_KEYS_DIR", DATA_DIR / "keys"))

PUBLISH_SCOPES = {
    "users": ["user.registered", "user.deleted"],
    "orders": ["order.created"],
    "notifications": [],  # it publishes nothing
}
SUBSCRIBE_SCOPES = {
    "users": ["order.created"],
    "orders": ["user.registered"],
    "notifications": ["user.*", "order.created"],
}
PROTECTED_NAMES = ["user.#", "order.#"]


def signing_key(service: str) -> Path:
    """The private key file of ``service``; a clear error when the keys were not made."""
    found = sorted((KEYS_DIR / service).glob(f"{service}.*.key"))
    if not found:
        raise RuntimeError(
            f"No signing key for the {service} service in {KEYS_DIR / service}: make the demo's"
            f" keys first with `python -m demo_runner.keys {KEYS_DIR}` (make demo does)."
        )
    return found[-1]


def trust_settings(service: str) -> dict[str, Any]:
    """The bus settings that turn signing, scopes and encryption on for ``service``."""
    return {
        "signing_key": str(signing_key(service)),
        "trusted_keys": str(KEYS_DIR / "public"),
        "publish_scopes": PUBLISH_SCOPES,
        "subscribe_scopes": SUBSCRIBE_SCOPES,
        "protected_names": PROTECTED_NAMES,
        "encryption_keys": str(KEYS_DIR / "aes"),
    }
