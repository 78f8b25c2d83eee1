"""The tokens file and the check each request makes (featurestore/auth.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from featurestore.auth import ADMIN, READ, WRITE, Authenticator, parse_tokens, www_authenticate
from featurestore.config import AuthConfig
from featurestore.errors import Code, FailedPrecondition


def test_a_token_without_scopes_has_all_three_and_comments_are_skipped() -> None:
    tokens = parse_tokens("# rotation: old and new\nold-1\n  new-2 read,write  # until May\n\n", "f")
    assert tokens == {"old-1": frozenset({READ, WRITE, ADMIN}), "new-2": frozenset({READ, WRITE})}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("secret-abc reed", "f line 1: unknown scope 'reed'"),
        ("\nsecret-abc read write", "f line 2: expected"),
    ],
)
def test_a_bad_line_is_named_by_its_number_never_by_its_token(text: str, problem: str) -> None:
    with pytest.raises(FailedPrecondition, match=problem) as raised:
        parse_tokens(text, "f")
    assert "secret-abc" not in str(raised.value)


def test_no_token_configured_means_no_check() -> None:
    assert Authenticator.from_config(AuthConfig()) is None


def test_an_empty_tokens_file_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("# nothing yet\n")
    with pytest.raises(FailedPrecondition, match="no token"):
        Authenticator.from_config(AuthConfig(tokens_file=str(tmp_path / "t")))


def test_the_check_tells_missing_invalid_and_forbidden_apart() -> None:
    auth = Authenticator(AuthConfig(tokens=SecretStr("r read\nw write")))
    assert auth.check_http(b"Bearer r", READ, "/j") is None
    assert auth.check_http(b"bearer r", READ, "/j") is None
    assert auth.check_grpc("Bearer r", READ, "/j") is None
    missing = auth.check_http(None, READ, "/j")
    invalid = auth.check_http(b"Bearer x", READ, "/j")
    forbidden = auth.check_grpc("Bearer w", READ, "/j")
    assert missing is not None and missing.code is Code.UNAUTHENTICATED
    assert invalid is not None and invalid.code is Code.UNAUTHENTICATED
    assert forbidden is not None and forbidden.code is Code.PERMISSION_DENIED
    assert www_authenticate(invalid).endswith('error="invalid_token"')
    assert 'scope="read"' in www_authenticate(forbidden)


def test_a_scope_that_is_not_required_needs_no_token() -> None:
    auth = Authenticator(AuthConfig(tokens=SecretStr("w write"), read=False))
    assert auth.check_http(None, READ, "/j") is None
    assert auth.check_http(None, WRITE, "/p") is not None


def test_a_changed_file_is_re_read_and_a_broken_one_keeps_the_tokens_in_force(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("one read\n")
    auth = Authenticator(AuthConfig(tokens_file=str(path)))
    assert not auth.reload_if_changed()
    path.write_text("two read\n")
    os.utime(path, ns=(1, 1))  # a new stamp even within the file system's time resolution
    assert auth.reload_if_changed()
    assert auth.check_http(b"Bearer two", READ, "/j") is None
    assert auth.check_http(b"Bearer one", READ, "/j") is not None
    path.write_text("two reed\n")
    assert not auth.reload_if_changed()
    assert auth.check_http(b"Bearer two", READ, "/j") is None
