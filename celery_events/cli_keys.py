"""``celery eventbus keys``: make and list the keys events are signed with.

::

    celery eventbus keys generate --service orders --out /etc/celery-events/keys
    celery eventbus keys generate --service orders --hmac          # a shared secret instead
    celery eventbus keys show /etc/celery-events/trusted

``generate`` writes ``{service}.{key_id}.key`` (the Ed25519 private key, mode 0600: the
``signing_key`` of that service alone) and ``{service}.{key_id}.pub`` (its public key, for the
``trusted_keys`` directory of every service that hears from it); with ``--hmac`` one
``{service}.{key_id}.hmac`` (mode 0600), which is both. It never overwrites a file. ``show``
lists the keys a ``trusted_keys`` directory (or file) holds: service, key id, algorithm and
fingerprint, the same fingerprint on the publisher's and the subscriber's side.

Neither needs an app (``-A``) or a broker.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from ._table import render_table
from .errors import ConfigurationError
from .settings import validate_service_name
from .trust.keys import (
    ED25519,
    HMAC_SHA256,
    KEY_ID_RE,
    generate_ed25519,
    generate_hmac,
    load_trusted_keys,
    new_key_id,
)

__all__ = ["keys"]


class _Usage(click.ClickException):
    exit_code = 2


def _write(path: Path, content: bytes, mode: int) -> None:
    # O_EXCL: an existing key is never replaced (it may be the only copy); the mode is set
    # when the file is made, so a private key is never readable by others, even briefly.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise _Usage(f"{path} exists already; choose another --key-id or --out.") from None
    except OSError as exc:
        raise _Usage(f"Cannot write {path}: {exc.strerror or exc}.") from None
    with os.fdopen(fd, "wb") as file:
        file.write(content)
    os.chmod(path, mode)  # whatever the umask took away from a .pub


@click.group(name="keys")
def keys() -> None:
    """Make and list the keys that sign events (no app or broker needed)."""


@keys.command(name="generate")
@click.option("--service", help="The service the key signs for (not with --aes).")
@click.option(
    "--hmac", "use_hmac", is_flag=True,
    help="A shared secret (HMAC-SHA256) instead of an Ed25519 key pair.",
)
@click.option(
    "--aes", "use_aes", is_flag=True,
    help="An AES-256 key for sensitive fields (encryption_keys), shared by a trust group.",
)
@click.option("--key-id", help="The key's id (default: today's date and a random suffix).")
@click.option(
    "--out", "out", default=".", show_default=True,
    type=click.Path(file_okay=False, path_type=Path), help="The directory to write to.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def generate(
    service: str | None, use_hmac: bool, use_aes: bool, key_id: str | None, out: Path,
    as_json: bool,
) -> None:
    """Write a new signing key of SERVICE: .key (private, 0600) and .pub, or one .hmac; or,
    with --aes, a new {key_id}.aes encryption key (0600)."""
    if use_aes:
        _generate_aes(service, use_hmac, key_id, out, as_json)
        return
    if service is None:
        raise _Usage("Name the service the key signs for: --service NAME (or --aes).")
    try:
        validate_service_name(service)
    except ConfigurationError as exc:
        raise _Usage(str(exc)) from exc
    key_id = key_id or new_key_id()
    if not KEY_ID_RE.match(key_id):
        raise _Usage(
            f"{key_id!r} is not a key id: use letters, digits, '_' and '-' (at most 64)."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _Usage(f"Cannot make the directory {out}: {exc.strerror or exc}.") from None
    stem = out / f"{service}.{key_id}"
    if use_hmac:
        secret = stem.with_name(stem.name + ".hmac")
        _write(secret, generate_hmac(), 0o600)
        written = {"secret": str(secret)}
        algorithm = HMAC_SHA256
    else:
        private_pem, public_pem = generate_ed25519()
        private, public = stem.with_name(stem.name + ".key"), stem.with_name(stem.name + ".pub")
        if public.exists():
            raise _Usage(f"{public} exists already; choose another --key-id or --out.")
        _write(private, private_pem, 0o600)
        _write(public, public_pem, 0o644)
        written = {"private": str(private), "public": str(public)}
        algorithm = ED25519
    fingerprint = load_trusted_keys([written.get("public") or written["secret"]])[0].fingerprint()
    if as_json:
        click.echo(json.dumps(
            {"service": service, "key_id": key_id, "algorithm": algorithm,
             "fingerprint": fingerprint, **written},
            indent=2,
        ))
        return
    if use_hmac:
        click.echo(f"Wrote the shared secret {written['secret']} (mode 0600).")
        click.echo(
            f"Give it to {service!r} as signing_key, and put it in the trusted_keys directory"
            " of each service that hears from it; keep it secret: whoever holds it can sign"
            f" as {service!r}."
        )
    else:
        click.echo(f"Wrote the private key {written['private']} (mode 0600) and the public key"
                   f" {written['public']}.")
        click.echo(
            f"Set signing_key to the .key file in {service!r} alone; copy the .pub file to the"
            " trusted_keys directory of each service that hears from it."
        )
    click.echo(f"Key id {key_id}, {algorithm}, fingerprint {fingerprint}.")


def _generate_aes(
    service: str | None, use_hmac: bool, key_id: str | None, out: Path, as_json: bool
) -> None:
    from .trust.sensitive import write_aes_key

    if service is not None or use_hmac:
        raise _Usage(
            "--aes makes an encryption key shared by every service of a trust group: it takes"
            " no --service and no --hmac."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        path = write_aes_key(out, key_id)
    except FileExistsError:
        raise _Usage(f"{out / (str(key_id) + '.aes')} exists already; choose another --key-id.") from None
    except ConfigurationError as exc:
        raise _Usage(str(exc)) from exc
    except OSError as exc:
        raise _Usage(f"Cannot write to {out}: {exc.strerror or exc}.") from None
    new_id = path.name[: -len(".aes")]
    if as_json:
        click.echo(json.dumps({"key_id": new_id, "algorithm": "aes-256-gcm", "key": str(path)}, indent=2))
        return
    click.echo(f"Wrote the encryption key {path} (mode 0600), key id {new_id}.")
    click.echo(
        "Add it to the encryption_keys directory of every service that publishes or handles"
        " the sensitive events; keep it secret: whoever holds it reads those fields."
    )


@keys.command(name="show")
@click.argument("where", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def show(where: Path, as_json: bool) -> None:
    """List the trusted keys in WHERE (a trusted_keys directory or a key file)."""
    try:
        found = load_trusted_keys(str(where))
    except ConfigurationError as exc:
        raise _Usage(str(exc)) from exc
    rows = sorted(
        ((k.service, k.key_id, k.algorithm, k.fingerprint()) for k in found),
    )
    if as_json:
        click.echo(json.dumps(
            [dict(zip(("service", "key_id", "algorithm", "fingerprint"), row, strict=True))
             for row in rows],
            indent=2,
        ))
        return
    if not rows:
        click.echo(f"No trusted keys (.pub or .hmac files) in {where}.", err=True)
        raise SystemExit(1)
    click.echo(render_table(["service", "key id", "algorithm", "fingerprint"], rows))
