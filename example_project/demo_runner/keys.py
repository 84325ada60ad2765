"""Each demo service's Ed25519 key pair, and their shared encryption key, made once in a keys
directory.

    python -m demo_runner.keys var/keys           # what the Procfile runs before each service

Layout (what ``trust_config.py`` reads)::

    keys/public/{service}.{key id}.pub            every service's public key: trusted by all
    keys/{service}/{service}.{key id}.key         the service's private key (mode 600)
    keys/aes/{key id}.aes                         the key sensitive fields are encrypted with,
                                                  shared by the three services (mode 600)

The keys are made in a temporary directory renamed into place, so that processes started
together (the Procfile's) agree on one set: the first rename wins, the others use its keys.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from celery_events.trust.keys import generate_ed25519, new_key_id
from celery_events.trust.sensitive import write_aes_key

SERVICES = ("users", "orders", "notifications")


def ensure_keys(keys_dir: Path, services: Iterable[str] = SERVICES) -> Path:
    """Make a key pair for each of ``services`` in ``keys_dir`` unless it holds keys already."""
    if (keys_dir / "public").is_dir():
        return keys_dir
    keys_dir.parent.mkdir(parents=True, exist_ok=True)
    draft = Path(tempfile.mkdtemp(prefix=".keys-", dir=keys_dir.parent))
    try:
        (draft / "public").mkdir()
        for service in services:
            private_pem, public_pem = generate_ed25519()
            key_id = new_key_id()
            (draft / service).mkdir(mode=0o700)
            private = draft / service / f"{service}.{key_id}.key"
            private.touch(mode=0o600)
            private.write_bytes(private_pem)
            (draft / "public" / f"{service}.{key_id}.pub").write_bytes(public_pem)
        (draft / "aes").mkdir(mode=0o700)
        write_aes_key(draft / "aes")
        try:
            os.rename(draft, keys_dir)
        except OSError:
            if not (keys_dir / "public").is_dir():
                raise  # not another process's keys: a real failure
    finally:
        shutil.rmtree(draft, ignore_errors=True)
    return keys_dir


if __name__ == "__main__":
    ensure_keys(Path(sys.argv[1] if len(sys.argv) > 1 else "var/keys").resolve())
