"""`celery eventbus flower`'s argument and credentials-file checks (no Flower process)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from celery_events.contrib.flower import read_basic_auth_file, secret_arguments


def test_secret_options_are_found_in_every_spelling() -> None:
    argv = [
        "--port=5555", "--basic-auth=u:p", "--basic_auth=u:p", "--oauth2_secret=s",
        "--cookie-secret=s", "--basic-auth-file=/run/secrets/flower", "basic_auth=u:p",
    ]
    assert secret_arguments(argv) == [
        "--basic-auth", "--basic_auth", "--oauth2_secret", "--cookie-secret",
    ]


def test_a_credentials_file_gives_one_user_a_line(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("# ops\n\nops:a:password:with:colons\n  dev:secret  \n")
    assert read_basic_auth_file(path) == ["ops:a:password:with:colons", "dev:secret"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no user:password line"),
        ("# only a comment\n", "holds no user:password line"),
        ("ops\n", "Line 1 of the basic auth file"),
        ("ops:pw\n:pw\n", "Line 2 of the basic auth file"),
        ("ops:\n", "Line 1 of the basic auth file"),
    ],
)
def test_a_bad_credentials_file_is_refused_with_its_line(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "users"
    path.write_text(text)
    with pytest.raises(click.ClickException, match=message) as raised:
        read_basic_auth_file(path)
    assert raised.value.exit_code == 2
    assert "ops:pw" not in raised.value.message  # a password is never echoed back


def test_a_missing_credentials_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(click.ClickException, match="Cannot read the basic auth file .*missing"):
        read_basic_auth_file(tmp_path / "missing")
