"""Bearer-token authentication for the HTTP and gRPC APIs (docs/security.md).

Tokens come from ``auth.tokens_file`` (or ``auth.tokens``): one a line, ``TOKEN
[read,write,admin]``; a token without scopes has all three, so several tokens live
side by side while clients move from an old one to a new one. A route needs a scope:
``read`` the join, ``write`` the push, ``admin`` the registry and lineage routes, each
only when its setting (``auth.read`` ...) is on. No token, or one not in the file: 401
/ UNAUTHENTICATED with ``WWW-Authenticate``; a known token without the scope: 403 /
PERMISSION_DENIED.

The check on the hot path is one set lookup of the ``authorization`` header's value
as it arrives: every accepted header value (``Bearer <token>``, in the spellings of
``Bearer`` clients send) is computed when the tokens are read. That lookup hashes the
presented value with the process's random SipHash key and compares bytes only with a
stored value of the same hash, so its time does not tell an attacker how much of a
token they guessed (what a constant-time comparison is for); with several tokens,
comparing against each with ``hmac.compare_digest`` would cost one comparison per
token on every request instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from featurestore import metrics
from featurestore.config import AuthConfig
from featurestore.errors import FailedPrecondition, FeatureStoreError, PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)

READ, WRITE, ADMIN = "read", "write", "admin"
SCOPES = (READ, WRITE, ADMIN)
REASONS = ("missing", "invalid", "forbidden")
REALM = 'Bearer realm="featurestore"'
# How often the tokens file is looked at for a change (a stat in a thread): a rotated
# Kubernetes Secret reaches the mounted file within about a minute, so 5 s adds little.
RELOAD_SECONDS = 5.0
_SCHEMES = ("Bearer", "bearer", "BEARER")  # the scheme is case-insensitive (RFC 9110)
# Shortest token accepted (e.g. `openssl rand -hex 16` gives 32 characters), and the
# value deploy/k8s/secret.yaml ships, which must never become a working token.
MIN_TOKEN_LENGTH = 16
PLACEHOLDER = "REPLACE-ME"


def parse_tokens(text: str, source: str) -> dict[str, frozenset[str]]:
    """Token -> scopes. Errors name the line, never the token. A line is split on
    whitespace first; a field starting with ``#`` starts a comment to the end of the
    line (a whole line when it is the first: a token cannot start with ``#``). A ``#``
    inside a token is part of it: the comment rule once cut such a token short and
    dropped its scopes, leaving a short token with all of them."""
    tokens: dict[str, frozenset[str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        comment = next((i for i, f in enumerate(fields) if f.startswith("#")), len(fields))
        fields = fields[:comment]
        if not fields:
            continue
        if len(fields) > 2:
            raise FailedPrecondition(f"{source} line {number}: expected `TOKEN [scope,...]`")
        token = fields[0]
        if not token.isascii() or not token.isprintable():
            raise FailedPrecondition(f"{source} line {number}: a token is printable ASCII without spaces")
        if token == PLACEHOLDER:
            raise FailedPrecondition(
                f"{source} line {number}: the placeholder {PLACEHOLDER}: put a real token there"
            )
        if len(token) < MIN_TOKEN_LENGTH:
            raise FailedPrecondition(
                f"{source} line {number}: a token of fewer than {MIN_TOKEN_LENGTH} characters is too easy to guess"
            )
        scopes = frozenset(s for s in fields[1].split(",") if s) if len(fields) == 2 else frozenset(SCOPES)
        unknown = sorted(scopes - set(SCOPES))
        if unknown:
            raise FailedPrecondition(f"{source} line {number}: {_bad_scopes(fields[1], unknown[0])}")
        tokens[token] = tokens.get(token, frozenset()) | scopes
    return tokens


def _bad_scopes(field: str, unknown: str) -> str:
    """What is wrong with a line's second field. It is quoted only when shorter than a
    token can be (MIN_TOKEN_LENGTH): in a `LABEL TOKEN` line the second field is the
    secret, and the error goes to stderr and the log."""
    if len(field) < MIN_TOKEN_LENGTH:
        return f"unknown scope {unknown!r}; use {', '.join(SCOPES)}"
    return (
        f"the second field is not a comma-separated list of {', '.join(SCOPES)} (not shown: "
        f"{len(field)} characters may be a token; a line is `TOKEN [scope,...]`, the token first)"
    )


@dataclass(frozen=True, slots=True)
class TokenTable:
    """Accepted ``authorization`` values per scope, as bytes (HTTP) and str (gRPC);
    None for a scope no route needs."""

    http: Mapping[str, frozenset[bytes] | None]
    grpc: Mapping[str, frozenset[str] | None]
    known_http: frozenset[bytes]
    known_grpc: frozenset[str]

    @staticmethod
    def build(tokens: Mapping[str, frozenset[str]], required: frozenset[str]) -> TokenTable:
        def values(token: str) -> list[str]:
            return [f"{scheme} {token}" for scheme in _SCHEMES]

        grpc = {
            scope: frozenset(v for t, s in tokens.items() if scope in s for v in values(t))
            if scope in required
            else None
            for scope in SCOPES
        }
        known = frozenset(v for t in tokens for v in values(t))
        return TokenTable(
            http={s: None if v is None else frozenset(x.encode() for x in v) for s, v in grpc.items()},
            grpc=grpc,
            known_http=frozenset(v.encode() for v in known),
            known_grpc=known,
        )


class Authenticator:
    """The tokens of one process (``table``, swapped whole when the file changes) and
    the check of a request's ``authorization`` value against a scope."""

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self.required = frozenset(s for s in SCOPES if getattr(config, s))
        self._stamp: tuple[int, int, int] | None = None
        # The problem the last re-read found (None: it read): logged once, not at every
        # RELOAD_SECONDS check, while every check reads the file again until one works.
        self._failed: str | None = None
        self.table = TokenTable.build(self._read(), self.required)

    @staticmethod
    def from_config(config: AuthConfig) -> Authenticator | None:
        """None when no token is configured: nothing asks for one."""
        if not config.tokens_file and not config.tokens.get_secret_value():
            return None
        if config.tokens_file and config.tokens.get_secret_value():
            raise FailedPrecondition("auth: give tokens or tokens_file, not both")
        return Authenticator(config)

    # -- the check each request makes ---------------------------------------------------

    def check_http(self, value: bytes | None, scope: str, route: str) -> FeatureStoreError | None:
        allowed = self.table.http[scope]
        if allowed is None or value in allowed:
            return None
        return self.refuse(value is None, value in self.table.known_http, scope, route)

    def check_grpc(self, value: str | None, scope: str, route: str) -> FeatureStoreError | None:
        allowed = self.table.grpc[scope]
        if allowed is None or value in allowed:
            return None
        return self.refuse(value is None, value in self.table.known_grpc, scope, route)

    def refuse(self, missing: bool, known: bool, scope: str, route: str) -> FeatureStoreError:
        """The error for a request whose token does not allow ``scope``, counted."""
        details = [{"scope": scope}]
        error: FeatureStoreError
        if missing:
            reason = "missing"
            error = Unauthenticated(f"{route} needs a bearer token (scope {scope})", details=details)
        elif not known:
            reason = "invalid"
            error = Unauthenticated("the bearer token is not valid", details=details)
        else:
            reason = "forbidden"
            error = PermissionDenied(f"the bearer token lacks scope {scope} for {route}", details=details)
        details[0]["reason"] = reason
        metrics.AUTH_FAILURES.labels(route, reason).inc()
        return error

    # -- reading and re-reading the tokens ---------------------------------------------

    def _read(self) -> dict[str, frozenset[str]]:
        path = self.config.tokens_file
        if not path:
            tokens = parse_tokens(self.config.tokens.get_secret_value(), "auth.tokens")
        else:
            try:
                stat = os.stat(path)
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                raise FailedPrecondition(f"auth.tokens_file {path}: {e.strerror or e}") from None
            except UnicodeDecodeError as e:  # (its bytes not shown: they may be a token)
                raise FailedPrecondition(
                    f"auth.tokens_file {path}: not UTF-8 text (at byte {e.start})"
                ) from None
            tokens = parse_tokens(text, f"auth.tokens_file {path}")
            self._stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if not tokens:
            raise FailedPrecondition(f"{path or 'auth.tokens'}: no token, so every request would be refused")
        return tokens

    def reload_if_changed(self) -> bool:
        """Re-read the tokens file when it changed (blocking: run it in a thread). A file
        that became unreadable or invalid keeps the tokens in force, and says so."""
        path = self.config.tokens_file
        if not path:
            return False
        try:
            stat = os.stat(path)
        except OSError as e:
            self._fail(f"auth.tokens_file {path}: {e.strerror}")
            return False
        # Unchanged since read: skipped. Once a read failed, every check reads again:
        # a chmod or chown that fixes it changes no (inode, mtime, size).
        if self._failed is None and (stat.st_ino, stat.st_mtime_ns, stat.st_size) == self._stamp:
            return False
        try:
            self.table = TokenTable.build(self._read(), self.required)
        except FailedPrecondition as e:
            self._fail(e.message)
            return False
        self._failed = None
        log.info("auth.tokens_file %s re-read", path)
        return True

    def _fail(self, problem: str) -> None:
        """Log a failed re-read once, until the problem differs (each check retries)."""
        if problem != self._failed:
            log.error("%s; the tokens read before stay in force (said once until this changes)", problem)
        self._failed = problem

    async def watch(self, interval: float = RELOAD_SECONDS) -> None:
        """Follow the tokens file until cancelled."""
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.reload_if_changed)


def www_authenticate(error: FeatureStoreError) -> str:
    """The WWW-Authenticate value of a refusal made by ``Authenticator.refuse`` (RFC 6750)."""
    detail = error.details[0] if error.details else {}
    if detail.get("reason") == "forbidden":
        return f'{REALM}, error="insufficient_scope", scope="{detail.get("scope", "")}"'
    if detail.get("reason") == "invalid":
        return f'{REALM}, error="invalid_token"'
    return REALM
