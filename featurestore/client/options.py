"""What the sync and async clients share: the address, TLS and token, deadlines, the
retry policy (tenacity) and the headers every call carries."""

from __future__ import annotations

import math
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import tenacity

from featurestore.client.errors import (
    ArgumentTypeError,
    ArgumentValueError,
    DeadlineExceededError,
    FeatureServiceError,
    UnavailableError,
)

DEFAULT_DEADLINE = 1.0  # seconds per join, retries included
_MAX_HEADER_MS = 60_000  # the largest x-featurestore-deadline-ms the server accepts

# gRPC reconnects after a failure with backoff that starts at 1 s and grows to 120 s;
# a server that comes back would wait that long for this client's next try. Retries are
# this client's job (below), so the channel reconnects within 100 ms - 1 s. (Not
# min_reconnect_backoff_ms: grpc uses it as the connect timeout, 20 s by default.)
#
# grpc's channels take answers up to 4 MB by default; the server sends up to 64 MiB
# (grpc.max_send_message_length in featurestore/api/grpc.py): a join of 40,000 rows x
# 9 features is ~5.5 MB.
GRPC_MAX_ANSWER_BYTES = 64 * 1024 * 1024
GRPC_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
    ("grpc.max_receive_message_length", GRPC_MAX_ANSWER_BYTES),
]


@dataclass(frozen=True, slots=True)
class Address:
    transport: str  # "http" | "grpc"
    target: str  # base URL (http) or host:port (grpc)
    tls: bool


def parse_address(address: str) -> Address:
    """``http://host:8080``, ``https://...`` (HTTP API), ``grpc://host:50051`` or
    ``grpcs://host:50051`` (gRPC, plaintext or TLS)."""
    parts = urlsplit(address)
    if parts.scheme in ("http", "https") and parts.netloc:
        return Address("http", address.rstrip("/"), parts.scheme == "https")
    if parts.scheme in ("grpc", "grpcs") and parts.netloc and parts.path in ("", "/"):
        return Address("grpc", parts.netloc, parts.scheme == "grpcs")
    raise ValueError(
        f"address {address!r}: expected http://host:port, https://host:port, grpc://host:port or grpcs://host:port"
    )


def _read_tls_file(option: str, path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"{option} {path}: {_reason(e)}") from None


def _reason(e: Exception) -> str:
    if isinstance(e, ssl.SSLError):
        return f"not a usable PEM file ({e.reason or e})"
    return (e.strerror if isinstance(e, OSError) else None) or str(e)


@dataclass(frozen=True, slots=True)
class ClientOptions:
    address: Address
    # sent as `Authorization: Bearer <token>` (HTTP) / `authorization` metadata; a secret:
    # not in the repr (a logged or printed client must not show it)
    token: str | None = field(repr=False)
    ca_file: str | None  # CA bundle of the server's certificate (default: https the system's, grpcs grpcio's)
    cert_file: str | None  # client certificate and key, for servers that require mutual TLS
    key_file: str | None
    deadline: float
    attempts: int  # tries per call: 1 + retries
    backoff: float  # waits between tries: random up to backoff * 2^n, at most max_backoff (s)
    max_backoff: float
    on_retry: Callable[[int, BaseException], None] | None  # (failed try's number, its error)

    def __post_init__(self) -> None:
        for option in ("ca_file", "cert_file", "key_file"):
            if getattr(self, option) == "":  # ca_file=os.environ.get("CA", ""): no file, as None
                object.__setattr__(self, option, None)
        if self.deadline <= 0 or not math.isfinite(self.deadline):
            raise ValueError(f"deadline must be a positive number of seconds, got {self.deadline!r}")
        if self.attempts < 1:
            raise ValueError(f"retries must be >= 0, got {self.attempts - 1}")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS)")
        if not self.address.tls and (self.ca_file or self.cert_file or self.key_file):
            # they would be ignored, and the token sent in clear
            raise ValueError("ca_file, cert_file and key_file need a TLS address: https:// or grpcs://")
        for option in ("ca_file", "cert_file", "key_file"):
            _read_tls_file(option, getattr(self, option))  # now: a wrong path fails here, named
        if self.token:  # (a header value: its bytes would go in the transport's error text)
            bad = next((i for i, c in enumerate(self.token) if not "!" <= c <= "~"), None)
            if bad is not None:
                raise ValueError(
                    f"token: not a bearer token: a space, control or non-ASCII character at position "
                    f"{bad} (strip a token read from a file)"
                )

    def ssl_context(self) -> ssl.SSLContext:
        """A file that is missing, unreadable or not PEM raises ``ValueError`` naming the
        option and the path (ssl names neither)."""
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            raise ValueError(f"ca_file {self.ca_file}: {_reason(e)}") from None
        if self.cert_file and self.key_file:
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ValueError) as e:
                raise ValueError(
                    f"cert_file {self.cert_file}, key_file {self.key_file}: {_reason(e)}"
                ) from None
        return ctx

    def grpc_credentials(self) -> Any:
        """grpc core refuses a CA that is not PEM, or a certificate that is not the key's,
        only in the handshake (UNAVAILABLE after the retries, its own log lines on
        stderr): given files are loaded by ``ssl_context`` first, the ``ValueError`` over
        HTTPS (review s57 cli 9)."""
        import grpc

        if self.ca_file or self.cert_file:
            self.ssl_context()
        return grpc.ssl_channel_credentials(
            _read_tls_file("ca_file", self.ca_file),
            _read_tls_file("key_file", self.key_file),
            _read_tls_file("cert_file", self.cert_file),
        )

    def deadline_at(self, deadline: float | None) -> float:
        seconds = self.deadline if deadline is None else deadline
        if seconds <= 0 or not math.isfinite(seconds):
            raise ValueError(f"deadline must be a positive number of seconds, got {seconds!r}")
        return time.monotonic() + seconds

    def retry_policy(self, deadline_at: float) -> dict[str, Any]:
        """tenacity arguments: retry UNAVAILABLE (the server's, or a transport failure)
        with exponential backoff and jitter, never past the call's deadline. A shed join
        (the server asked for a wait: HTTP 503 with Retry-After, gRPC RESOURCE_EXHAUSTED
        with retry-after) is tried again no sooner than that, and not at all when the
        deadline comes first: coming back at once only adds to the overload."""
        # "full jitter": uniform in [0, min(max_backoff, backoff * 2^n)], so clients that
        # failed together do not come back together
        backoff = tenacity.wait_random_exponential(multiplier=self.backoff, max=self.max_backoff)
        drawn: dict[int, float] = {}  # the pause after each failed try, drawn once

        def pause(state: tenacity.RetryCallState) -> float:
            if state.attempt_number not in drawn:
                drawn[state.attempt_number] = max(backoff(state), _asked_wait(state) or 0.0)
            return drawn[state.attempt_number]

        def wait(state: tenacity.RetryCallState) -> float:
            return max(0.0, min(pause(state), deadline_at - time.monotonic()))

        # A pause that would leave less than a try's worth of the deadline ends the retries
        # with the last failure (a down server's UNAVAILABLE): a try at the deadline could
        # only say the deadline passed (38 of 40 joins did, at the docs' 0.05 s)
        def stop(state: tenacity.RetryCallState) -> bool:
            left = deadline_at - time.monotonic() - pause(state)
            return state.attempt_number >= self.attempts or left < _MIN_TRY_SECONDS

        policy: dict[str, Any] = {
            "retry": tenacity.retry_if_exception(retryable),
            "wait": wait,
            "stop": stop,
            "reraise": True,
        }
        on_retry = self.on_retry
        if on_retry is not None:

            def before_sleep(state: tenacity.RetryCallState) -> None:
                assert state.outcome is not None
                error = state.outcome.exception()
                assert error is not None
                on_retry(state.attempt_number, error)

            policy["before_sleep"] = before_sleep
        return policy

    def metadata(self, traceparent: str | None) -> list[tuple[str, str]]:
        """Headers / metadata every try of a join carries: the token and the trace
        context. Made once per join, before its first try: a ``traceparent`` that is no
        W3C trace context is refused here (``check_traceparent``), not sent. A given
        ``traceparent`` replaces the propagator's trace context (its ``traceparent`` and
        the ``tracestate`` of that span), not its ``baggage``."""
        out = []
        if self.token:
            out.append(("authorization", f"Bearer {self.token}"))
        context = propagated()
        if traceparent:
            context.pop("tracestate", None)
            context["traceparent"] = check_traceparent(traceparent)
        out += sorted(context.items(), key=lambda item: TRACE_HEADERS.index(item[0]))
        return out


def retryable(e: BaseException) -> bool:
    """UNAVAILABLE (unless a retry cannot help), and a shed join: an answer that says
    when to come back (``retry_after``), over HTTP (503) or gRPC (RESOURCE_EXHAUSTED)."""
    if isinstance(e, UnavailableError):
        return e.retryable
    return isinstance(e, FeatureServiceError) and e.code in _SHED_CODES and e.retry_after is not None


_SHED_CODES = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})
# Less time left than this after a pause is not worth another try (a sleep may overrun
# by as much on a busy host, and a round trip to the server takes about as long).
_MIN_TRY_SECONDS = 0.005


def _asked_wait(state: tenacity.RetryCallState) -> float | None:
    """The failed try's ``retry_after``: what the server asked the client to wait."""
    error = state.outcome.exception() if state.outcome is not None else None
    return error.retry_after if isinstance(error, FeatureServiceError) else None


def remaining(deadline_at: float) -> float:
    """Seconds left before ``deadline_at``; DeadlineExceededError when none are."""
    left = deadline_at - time.monotonic()
    if left <= 0:
        raise DeadlineExceededError("the client's deadline passed before an answer (retries included)")
    return left


def server_deadline_ms(left: float) -> str:
    """The x-featurestore-deadline-ms header: the time left, as a gRPC call's deadline
    tells it. The server keeps a margin of it for its answer (docs/api.md, "Deadlines"),
    so a slow store yields UNAVAILABLE values rather than a client timeout."""
    return str(min(_MAX_HEADER_MS, max(1, int(left * 1000))))


# A W3C traceparent as the server reads it (featurestore/tracing.py, which the client does
# not import): version-traceid-parentid-flags in lowercase hex; a version after 00 may
# append fields after another '-' (printable ASCII, spaces inside: a header's text), 00 may not, ff
# is none, and a trace or parent id of zeros is invalid. The server ignores an invalid
# one; the client refuses it, as a header (h11) or metadata (grpc) may not carry it.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(-[ -~]*)?", re.ASCII)
_W3C_FORM = "00-<32 hex digits: trace id>-<16 hex digits: parent id>-<2 hex digits: flags>"


def check_traceparent(value: object) -> str:
    """``value`` when it is a W3C traceparent the server honours; ``ArgumentValueError``
    (``InvalidArgumentError`` and ``ValueError``) naming it otherwise, also for spaces
    around it (the server would strip them, h11 refuses them, grpc sends them)."""
    if not isinstance(value, str):
        raise ArgumentTypeError(f"traceparent: a str, not {type(value).__name__} {value!r:.40}")
    problem = _traceparent_problem(value)
    if problem is not None:
        raise ArgumentValueError(f"traceparent {value!r:.80}: {problem}; expected {_W3C_FORM}")
    return value


def _traceparent_problem(value: str) -> str | None:
    if value != value.strip():
        return "spaces around it (strip it)"
    m = _TRACEPARENT.fullmatch(value)
    if m is None:
        return "not a W3C traceparent"
    version, trace_id, parent_id, rest = m.groups()
    if version == "ff":
        return "version ff is invalid"
    if version == "00" and rest is not None:
        return "version 00 has exactly four fields"
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return "a trace id or parent id of zeros is invalid"
    return None


# What the client sends of the configured propagator's injection: W3C trace context
# (traceparent, which the server reads, and tracestate, which goes with it) and W3C
# baggage, for the server and any proxy or mesh in between. A non-W3C propagator's
# headers (b3, uber-trace-id) are not sent: the server reads none of them.
TRACE_HEADERS = ("traceparent", "tracestate", "baggage")


def propagated() -> dict[str, str]:
    """The ``TRACE_HEADERS`` the configured OpenTelemetry propagator (the global one:
    W3C trace context and baggage by default) injects for the current context, when
    opentelemetry is installed; the server's request span becomes the caller's child.
    A value a header cannot carry is left out (and a tracestate without its parent)."""
    try:
        from opentelemetry import propagate
    except ImportError:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    injected = {str(k).lower(): v for k, v in carrier.items()}
    out = {name: v for name in TRACE_HEADERS if isinstance(v := injected.get(name), str) and _header_text(v)}
    if "traceparent" in out and _traceparent_problem(out["traceparent"]) is not None:
        del out["traceparent"]
    if "traceparent" not in out:
        out.pop("tracestate", None)
    return out


def _header_text(value: str) -> bool:
    """Text both an HTTP header (h11) and gRPC metadata carry: printable ASCII, no space
    at either end."""
    return bool(value) and value == value.strip(" ") and all(" " <= c <= "~" for c in value)


def unreachable(message: str, *, retry: bool = True) -> FeatureServiceError:
    """A transport failure as the client reports it: UNAVAILABLE (retried unless a retry
    cannot help, as with a certificate the client does not trust)."""
    err = UnavailableError(message)
    err.retryable = retry
    return err
