"""The tokens file and the check each request makes (featurestore/auth.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from featurestore.auth import ADMIN, READ, WRITE, Authenticator, parse_tokens, www_authenticate
from featurestore.config import AuthConfig
from featurestore.errors import Code, FailedPrecondition
from tests.support import ROOT

R_TOKEN, W_TOKEN = "read-token-0123456789", "write-token-0123456789"


def test_a_token_without_scopes_has_all_three_and_comment_lines_are_skipped() -> None:
    tokens = parse_tokens(
        "# rotation: old and new\nold-token-0123456789\n  # until May\n  new-token-0123456789 read,write\n\n",
        "f",
    )
    assert tokens == {
        "old-token-0123456789": frozenset({READ, WRITE, ADMIN}),
        "new-token-0123456789": frozenset({READ, WRITE}),
    }


def test_a_comment_after_a_token_and_its_scopes_is_a_comment_as_before() -> None:
    tokens = parse_tokens(
        "secret-abc-0123456789 read  # ranking, until May\nother-token-0123456789 #all\n", "f"
    )
    assert tokens == {
        "secret-abc-0123456789": frozenset({READ}),
        "other-token-0123456789": frozenset({READ, WRITE, ADMIN}),
    }


def test_a_hash_inside_a_token_is_part_of_the_token_and_keeps_its_scopes() -> None:
    tokens = parse_tokens("abc#0123456789abcdef read\n", "f")
    assert tokens == {"abc#0123456789abcdef": frozenset({READ})}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("short-tok read", "f line 1: a token of fewer than 16 characters"),
        ("# keep\nREPLACE-ME", "f line 2: the placeholder REPLACE-ME"),
    ],
)
def test_a_short_token_or_the_placeholder_refuses_the_file(text: str, problem: str) -> None:
    with pytest.raises(FailedPrecondition, match=problem) as raised:
        parse_tokens(text, "f")
    assert "short-tok" not in str(raised.value) and "secret-abc" not in str(raised.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("secret-abc-0123456789 reed", "f line 1: unknown scope 'reed'"),
        ("\nsecret-abc-0123456789 read write", "f line 2: expected"),
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


def test_a_tokens_file_that_is_not_utf8_refuses_to_start_and_keeps_the_tokens_on_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "t"
    path.write_bytes(b"caf\xe9-token-0123456789 read\n")  # Latin-1
    with pytest.raises(FailedPrecondition, match="not UTF-8 text") as refused:
        Authenticator.from_config(AuthConfig(tokens_file=str(path)))
    assert "caf" not in refused.value.message  # (a token's bytes are not echoed)
    path.write_text("one-token-0123456789 read\n")
    auth = Authenticator(AuthConfig(tokens_file=str(path)))
    path.write_bytes(b"\xff\xfeo\x00n\x00e\x00")  # UTF-16
    os.utime(path, ns=(1, 1))
    assert not auth.reload_if_changed()
    assert "not UTF-8 text" in caplog.text
    assert auth.check_http(b"Bearer one-token-0123456789", READ, "/j") is None


def test_the_check_tells_missing_invalid_and_forbidden_apart() -> None:
    auth = Authenticator(AuthConfig(tokens=SecretStr(f"{R_TOKEN} read\n{W_TOKEN} write")))
    assert auth.check_http(f"Bearer {R_TOKEN}".encode(), READ, "/j") is None
    assert auth.check_http(f"bearer {R_TOKEN}".encode(), READ, "/j") is None
    assert auth.check_grpc(f"Bearer {R_TOKEN}", READ, "/j") is None
    missing = auth.check_http(None, READ, "/j")
    invalid = auth.check_http(b"Bearer x", READ, "/j")
    forbidden = auth.check_grpc(f"Bearer {W_TOKEN}", READ, "/j")
    assert missing is not None and missing.code is Code.UNAUTHENTICATED
    assert invalid is not None and invalid.code is Code.UNAUTHENTICATED
    assert forbidden is not None and forbidden.code is Code.PERMISSION_DENIED
    assert www_authenticate(invalid).endswith('error="invalid_token"')
    assert 'scope="read"' in www_authenticate(forbidden)


def test_a_scope_that_is_not_required_needs_no_token() -> None:
    auth = Authenticator(AuthConfig(tokens=SecretStr(f"{W_TOKEN} write"), read=False))
    assert auth.check_http(None, READ, "/j") is None
    assert auth.check_http(None, WRITE, "/p") is not None


def test_a_changed_file_is_re_read_and_a_broken_one_keeps_the_tokens_in_force(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("one-token-0123456789 read\n")
    auth = Authenticator(AuthConfig(tokens_file=str(path)))
    assert not auth.reload_if_changed()
    path.write_text("two-token-0123456789 read\n")
    os.utime(path, ns=(1, 1))  # a new stamp even within the file system's time resolution
    assert auth.reload_if_changed()
    assert auth.check_http(b"Bearer two-token-0123456789", READ, "/j") is None
    assert auth.check_http(b"Bearer one-token-0123456789", READ, "/j") is not None
    path.write_text("two-token-0123456789 reed\n")
    assert not auth.reload_if_changed()
    assert auth.check_http(b"Bearer two-token-0123456789", READ, "/j") is None


def test_a_label_then_token_line_is_refused_without_quoting_the_token() -> None:
    """`LABEL TOKEN` puts the secret where the scopes go: the error said
    "unknown scope '<token>'" on stderr and in the log."""
    secret = "3f9c1e7a5b2d4c8e9a1b0c2d3e4f5a6b"
    with pytest.raises(FailedPrecondition, match="line 1: the second field is not a") as raised:
        parse_tokens(f"ranking-service-prod {secret}\n", "f")
    assert secret not in raised.value.message
    assert "3f9c" not in raised.value.message


def test_a_broken_tokens_file_is_logged_once_until_it_changes_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The same error was logged at every 5 s check until the file was fixed."""
    path = tmp_path / "tokens"
    path.write_text("one-token-0123456789 read\n")
    auth = Authenticator(AuthConfig(tokens_file=str(path)))
    path.write_text("one-token-0123456789 reed\n")
    os.utime(path, ns=(1, 1))
    for _ in range(3):
        assert not auth.reload_if_changed()
    assert caplog.text.count("unknown scope 'reed'") == 1
    path.write_text("one-token-0123456789 raed\n")
    os.utime(path, ns=(2, 2))
    assert not auth.reload_if_changed() and not auth.reload_if_changed()
    assert caplog.text.count("unknown scope 'raed'") == 1
    path.unlink()
    assert not auth.reload_if_changed() and not auth.reload_if_changed()
    assert caplog.text.count("No such file") == 1
    path.write_text("two-token-0123456789 read\n")
    assert auth.reload_if_changed()
    assert auth.check_http(b"Bearer two-token-0123456789", READ, "/j") is None


# Rotates the tokens file (argv[1]) with mode 000, then fixes it with chmod alone: the
# (inode, mtime, size) a re-read is keyed on stays the same.
_CHMOD_DRIVER = """
import os, sys
from featurestore.auth import READ, Authenticator
from featurestore.config import AuthConfig
path = sys.argv[1]
auth = Authenticator(AuthConfig(tokens_file=path))
with open(path, "w") as f:
    f.write("two-token-0123456789 read\\n")
os.chmod(path, 0)
os.utime(path, ns=(1, 1))
print("unreadable", os.access(path, os.R_OK), auth.reload_if_changed(), auth.reload_if_changed())
os.chmod(path, 0o644)
print("fixed", auth.reload_if_changed(), auth.check_http(b"Bearer two-token-0123456789", READ, "/j") is None)
"""


def test_a_tokens_file_made_readable_by_chmod_is_re_read_at_the_next_check(tmp_path: Path) -> None:
    """A failed read was remembered by the file's stamp, which chmod does not change:
    the rotated tokens stayed refused until the content changed again."""
    path = tmp_path / "tokens"
    path.write_text("one-token-0123456789 read\n")
    # root reads any file: without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, mode 000 holds
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    out = subprocess.run(
        [*drop, sys.executable, "-c", _CHMOD_DRIVER, str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["unreadable False False False", "fixed True True"]
    assert out.stderr.count("Permission denied") == 1, out.stderr
