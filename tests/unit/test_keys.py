"""Keys and keyrings: Ed25519 and HMAC-SHA256, key files and inline keys, loading errors,
rotation (two keys of one service trusted at once)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from celery_events import ConfigurationError, InvalidSignature
from celery_events.cli_keys import keys as keys_command
from celery_events.settings import Settings
from celery_events.trust import keyring_for
from celery_events.trust.keys import (
    ED25519,
    HMAC_SHA256,
    Keyring,
    generate_ed25519,
    generate_hmac,
    load_signing_key,
    load_trusted_keys,
    new_key_id,
)

MESSAGE = b'{"data":{},"id":"1","source":"orders","type":"order.placed"}'


def write_pair(directory: Path, service: str, key_id: str) -> tuple[Path, Path]:
    private, public = generate_ed25519()
    key = directory / f"{service}.{key_id}.key"
    pub = directory / f"{service}.{key_id}.pub"
    key.write_bytes(private)
    pub.write_bytes(public)
    return key, pub


def test_an_ed25519_signature_verifies_with_the_public_key_only(tmp_path: Path) -> None:
    # Given the orders service's key pair, its public key in a subscriber's trusted directory
    key, _ = write_pair(tmp_path, "orders", "k1")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "orders.k1.pub").write_bytes((tmp_path / "orders.k1.pub").read_bytes())
    signer = Keyring(load_signing_key("orders", str(key)))
    subscriber = Keyring(None, load_trusted_keys(str(trusted)))

    # When orders signs a message
    key_id, signature = signer.sign(MESSAGE)

    # Then the subscriber verifies it, and refuses it changed, or with another source
    assert key_id == "k1" and signer.signing_key is not None
    assert signer.signing_key.algorithm == ED25519
    subscriber.verify("orders", key_id, MESSAGE, signature)
    with pytest.raises(InvalidSignature, match="does not match"):
        subscriber.verify("orders", key_id, MESSAGE.replace(b"1", b"2"), signature)
    with pytest.raises(InvalidSignature, match="signed with key 'k1' of orders"):
        subscriber.verify("payments", key_id, MESSAGE, signature)
    # And the subscriber cannot sign: it holds no private key
    with pytest.raises(ConfigurationError, match="no signing key"):
        subscriber.sign(MESSAGE)


def test_hmac_secrets_sign_and_verify_and_short_ones_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "billing.team.hmac"
    secret.write_bytes(generate_hmac())
    ring = Keyring(load_signing_key("billing", str(secret)), load_trusted_keys(str(tmp_path)))
    key_id, signature = ring.sign(MESSAGE)
    ring.verify("billing", key_id, MESSAGE, signature)
    assert {k.algorithm for k in ring} == {HMAC_SHA256}
    with pytest.raises(InvalidSignature, match="does not match"):
        ring.verify("billing", key_id, MESSAGE + b" ", signature)

    (tmp_path / "billing.short.hmac").write_text("c2hvcnQ=\n")
    with pytest.raises(ConfigurationError, match="5 bytes; use at least 32"):
        load_trusted_keys(str(tmp_path))


def test_a_key_of_another_service_is_named_as_such(tmp_path: Path) -> None:
    # Given a subscriber trusting both orders and payments
    orders_key, _ = write_pair(tmp_path, "orders", "o1")
    write_pair(tmp_path, "payments", "p1")
    orders = Keyring(load_signing_key("orders", str(orders_key)))
    subscriber = Keyring(None, load_trusted_keys(str(tmp_path)))
    # When orders signs an event that claims to come from payments
    key_id, signature = orders.sign(MESSAGE)
    # Then the key is named as orders', and the event refused
    with pytest.raises(InvalidSignature, match="source is 'payments' but it is signed with key 'o1' of orders"):
        subscriber.verify("payments", key_id, MESSAGE, signature)


@pytest.mark.parametrize(
    ("key_id", "signature", "message"),
    [
        (None, "c2ln", "names no key id"),
        ("o1", None, "not signed"),
        ("o1", "", "not signed"),
        ("o1", "not base64!", "unreadable"),
        ("o1", 7, "unreadable"),
        ("o1", "c2ln", "does not match"),  # base64 of the wrong length for Ed25519
        ("zz", "c2ln", "'zz', which is not a trusted key"),
    ],
)
def test_missing_and_unreadable_signatures_are_refused(
    tmp_path: Path, key_id: object, signature: object, message: str
) -> None:
    write_pair(tmp_path, "orders", "o1")
    ring = Keyring(None, load_trusted_keys(str(tmp_path)))
    with pytest.raises(InvalidSignature, match=message):
        ring.verify("orders", key_id, MESSAGE, signature)


def test_rotation_trusts_the_old_and_the_new_key_of_one_service(tmp_path: Path) -> None:
    # Given orders' old key and, rotated in, its new one, both trusted by a subscriber
    old_key, _ = write_pair(tmp_path, "orders", "2026-01")
    new_key, _ = write_pair(tmp_path, "orders", "2026-12")
    subscriber = Keyring(None, load_trusted_keys(str(tmp_path)))
    # When events are signed with either (workers not yet restarted, and restarted)
    for key in (old_key, new_key):
        key_id, signature = Keyring(load_signing_key("orders", str(key))).sign(MESSAGE)
        # Then both verify
        subscriber.verify("orders", key_id, MESSAGE, signature)
    # And once the old public key is removed, the old key's signatures no longer do
    (tmp_path / "orders.2026-01.pub").unlink()
    after = Keyring(None, load_trusted_keys(str(tmp_path)))
    key_id, signature = Keyring(load_signing_key("orders", str(old_key))).sign(MESSAGE)
    with pytest.raises(InvalidSignature, match="not a trusted key"):
        after.verify("orders", key_id, MESSAGE, signature)


def test_inline_keys_in_settings() -> None:
    private, public = generate_ed25519()
    secret = generate_hmac().decode().strip()
    settings = Settings.from_options({
        "signing_key": {"key_id": "k1", "key": private.decode()},
        "trusted_keys": {"orders": {"k1": public.decode()}, "billing": {"t": f"hmac:{secret}"}},
    })
    ring = keyring_for("orders", settings)
    assert ring is not None
    key_id, signature = ring.sign(MESSAGE)
    ring.verify("orders", key_id, MESSAGE, signature)
    assert sorted((k.service, k.algorithm) for k in ring) == [
        ("billing", HMAC_SHA256), ("orders", ED25519)
    ]
    assert keyring_for("orders", Settings()) is None


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("orders.k1.pub", "not a key", "named .pub but does not hold PEM"),
        ("orders.k1.hmac", "-----BEGIN PUBLIC KEY-----\n", "named .hmac but holds PEM"),
        ("orders.k1.pub", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
         "not a PEM public key"),
        ("Orders.k1.pub", "x", "with the service's name in lowercase"),
        ("orders.k1.hmac", "not base64 at all!", "not base64"),
    ],
)
def test_bad_trusted_key_files_are_refused_naming_the_file(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(ConfigurationError, match=message) as caught:
        load_trusted_keys(str(tmp_path))
    assert name in str(caught.value)


def test_a_private_key_given_as_trusted_is_refused(tmp_path: Path) -> None:
    key, _ = write_pair(tmp_path, "orders", "k1")
    wrong = tmp_path / "trusted" / "orders.k1.pub"
    wrong.parent.mkdir()
    wrong.write_bytes(key.read_bytes())
    with pytest.raises(ConfigurationError, match="is a private key; trust the public key"):
        load_trusted_keys(str(wrong.parent))


def test_signing_key_loading_errors(tmp_path: Path) -> None:
    key, pub = write_pair(tmp_path, "orders", "k1")
    with pytest.raises(ConfigurationError, match="is a key of service 'orders', not of 'payments'"):
        load_signing_key("payments", str(key))
    with pytest.raises(ConfigurationError, match=r"must be named orders\.<key id>\.key"):
        load_signing_key("orders", str(pub))
    with pytest.raises(ConfigurationError, match="Cannot read the signing key file"):
        load_signing_key("orders", str(tmp_path / "orders.k2.key"))
    with pytest.raises(ConfigurationError, match="must be the path of a key file"):
        load_signing_key("orders", 42)
    with pytest.raises(ConfigurationError, match="is not a key id"):
        load_signing_key("orders", {"key_id": "a b", "key": "x"})
    pub.rename(tmp_path / "orders.k3.key")
    with pytest.raises(ConfigurationError, match="not a PEM private key"):
        load_signing_key("orders", str(tmp_path / "orders.k3.key"))
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_trusted_keys(str(tmp_path / "nowhere"))


def test_a_trusted_key_that_is_not_the_signing_keys_own_is_refused(tmp_path: Path) -> None:
    # Given orders' signing key k1, and a trusted orders.k1.pub of another pair
    key, _ = write_pair(tmp_path, "orders", "k1")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    write_pair(trusted, "orders", "k1")
    (trusted / "orders.k1.key").unlink()
    with pytest.raises(ConfigurationError, match="is not the public key of the signing key"):
        Keyring(load_signing_key("orders", str(key)), load_trusted_keys(str(trusted)))


def test_new_key_ids_differ() -> None:
    assert len({new_key_id() for _ in range(50)}) == 50


def test_the_keys_command_writes_private_files_0600_and_shows_fingerprints(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "keys"
    made = runner.invoke(keys_command, ["generate", "--service", "orders", "--key-id", "k1",
                                        "--out", str(out)])
    assert made.exit_code == 0, made.output
    secret = runner.invoke(keys_command, ["generate", "--service", "billing", "--hmac", "--out",
                                          str(out), "--json"])
    assert secret.exit_code == 0, secret.output
    mode = {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in out.iterdir()}
    hmac_name = next(n for n in mode if n.endswith(".hmac"))
    assert mode["orders.k1.key"] == 0o600 and mode[hmac_name] == 0o600
    assert mode["orders.k1.pub"] == 0o644
    # The key pair works as a signing key and a trusted key
    ring = Keyring(load_signing_key("orders", str(out / "orders.k1.key")), load_trusted_keys(str(out)))
    ring.verify("orders", *_signed(ring))

    shown = runner.invoke(keys_command, ["show", str(out)])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0].split() == ["SERVICE", "KEY", "ID", "ALGORITHM", "FINGERPRINT"]
    fingerprint = next(k for k in ring if k.service == "orders").fingerprint()
    assert any(line.split() == ["orders", "k1", "ed25519", fingerprint] for line in lines)
    assert any(line.split()[0] == "billing" and "hmac-sha256" in line for line in lines)

    # An existing key is never overwritten; a bad service or key id is refused
    again = runner.invoke(keys_command, ["generate", "--service", "orders", "--key-id", "k1",
                                         "--out", str(out)])
    assert again.exit_code == 2 and "exists already" in again.output
    bad = runner.invoke(keys_command, ["generate", "--service", "Orders", "--out", str(out)])
    assert bad.exit_code == 2 and "not a valid service name" in bad.output
    bad_id = runner.invoke(keys_command, ["generate", "--service", "orders", "--key-id", "a.b",
                                          "--out", str(out)])
    assert bad_id.exit_code == 2 and "is not a key id" in bad_id.output
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = runner.invoke(keys_command, ["show", str(empty)])
    assert nothing.exit_code == 1 and "No trusted keys" in nothing.output


def _signed(ring: Keyring) -> tuple[str, bytes, str]:
    key_id, signature = ring.sign(MESSAGE)
    return key_id, MESSAGE, signature


def test_a_key_id_used_by_two_services_still_names_the_signer(tmp_path: Path) -> None:
    # Key ids are chosen per service: orders and payments both call theirs "v1"
    orders_key, _ = write_pair(tmp_path, "orders", "v1")
    write_pair(tmp_path, "payments", "v1")
    subscriber = Keyring(None, load_trusted_keys(str(tmp_path)))
    key_id, signature = Keyring(load_signing_key("orders", str(orders_key))).sign(MESSAGE)
    with pytest.raises(InvalidSignature, match="signed with key 'v1' of orders"):
        subscriber.verify("payments", key_id, MESSAGE, signature)
    subscriber.verify("orders", key_id, MESSAGE, signature)


def test_the_keys_command_writes_an_encryption_key_its_services_load(tmp_path: Path) -> None:
    from celery_events.trust.sensitive import load_encryption_keys

    runner = CliRunner()
    out = tmp_path / "aes"
    made = runner.invoke(keys_command, ["generate", "--aes", "--key-id", "k1", "--out", str(out)])
    assert made.exit_code == 0, made.output
    assert stat.S_IMODE(os.stat(out / "k1.aes").st_mode) == 0o600
    newer = runner.invoke(keys_command, ["generate", "--aes", "--out", str(out), "--json"])
    assert newer.exit_code == 0, newer.output

    # Both keys decrypt; the newest (greatest id) encrypts
    keys = load_encryption_keys(str(out))
    assert len(keys.key_ids) == 2
    sealed = keys.encrypt("ada@example.org", "event-1", "email")
    assert keys.decrypt(sealed, "event-1", "email") == "ada@example.org"

    again = runner.invoke(keys_command, ["generate", "--aes", "--key-id", "k1", "--out", str(out)])
    assert again.exit_code == 2 and "exists already" in again.output
    mixed = runner.invoke(keys_command, ["generate", "--aes", "--service", "orders", "--out", str(out)])
    assert mixed.exit_code == 2 and "no --service" in mixed.output
    missing = runner.invoke(keys_command, ["generate", "--out", str(out)])
    assert missing.exit_code == 2 and "--service NAME" in missing.output
