"""The blocking HTTP client's deadline over a whole try. httpx's timeouts bound each
phase and each socket read on its own, so a server that trickles its answer (a header
line or a few bytes at a time, each within the read timeout) would hold a join long past
its deadline. Here every connect, TLS handshake, write and read of the try is given at
most the time left before the join's deadline (a context variable the client sets
around the try), and none starts once it has passed: the try fails with httpx's
timeout at the deadline, whatever the server does.

The asyncio client needs none of this: it wraps each try in ``asyncio.timeout``.

Passing httpx a transport turns off its proxies from the environment, so
``deadline_mounts`` builds them the way httpx does (``HTTP_PROXY``, ``HTTPS_PROXY``,
``ALL_PROXY``, ``NO_PROXY``, through ``urllib.request.getproxies``), each a deadline
transport through its proxy: the blocking client goes through the same proxies as the
asyncio one.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import time
import warnings
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any
from urllib.request import getproxies

import httpcore
import httpx

_DEADLINE: ContextVar[float | None] = ContextVar("featurestore_client_deadline", default=None)


@contextlib.contextmanager
def bounded(deadline_at: float) -> Iterator[None]:
    """The network I/O of this thread's HTTP calls inside: none past ``deadline_at``
    (``time.monotonic()`` seconds)."""
    token = _DEADLINE.set(deadline_at)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _clamp(timeout: float | None, expired: type[Exception]) -> float | None:
    deadline_at = _DEADLINE.get()
    if deadline_at is None:
        return timeout
    left = deadline_at - time.monotonic()
    if left <= 0:  # a socket timeout of 0 would mean non-blocking, not "expired"
        raise expired("the client's deadline passed")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self._stream.start_tls(ssl_context, server_hostname, _clamp(timeout, httpcore.ConnectTimeout))
        return _Stream(tls)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


_IP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        # Each address the name resolves to in turn, with the time left: httpcore's own
        # connect (socket.create_connection) gives each the whole timeout, so a name of
        # three addresses that drop SYNs held a 0.5 s join 1.6 s. The resolution itself is
        # not bounded (the system resolver takes no timeout; docs/client.md).
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addresses = [(str(a[4][0]), int(a[4][1])) for a in found if a[0] in _IP_FAMILIES]
        except OSError as e:
            raise httpcore.ConnectError(f"{host}: {e}") from e
        failure: Exception = httpcore.ConnectError(f"{host}: getaddrinfo returned no address")
        for address in addresses:
            left = _clamp(timeout, httpcore.ConnectTimeout)  # raises once the deadline has passed
            try:
                stream = self._backend.connect_tcp(*address, left, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                failure = e  # the next address, with what is left of the deadline
                continue
            return _Stream(stream)
        raise failure

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        timeout = _clamp(timeout, httpcore.ConnectTimeout)
        return _Stream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def deadline_transport(verify: ssl.SSLContext | bool, proxy: str | None = None) -> httpx.HTTPTransport:
    """httpx's transport (its settings untouched) whose connections do their I/O through
    ``_Backend``. httpx has no public hook for the network backend: this sets its
    connection pool's before any connection exists (``HTTPTransport._pool``, httpcore's
    ``ConnectionPool._network_backend``; tests/unit/test_client_deadline.py fails if
    either changes). Without them, a warning, and the per-phase timeouts alone.
    ``proxy``: a proxy URL its requests go through."""
    transport = httpx.HTTPTransport(verify=verify, proxy=proxy)
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if not isinstance(pool, httpcore.ConnectionPool) or not isinstance(backend, httpcore.NetworkBackend):
        warnings.warn(
            "featurestore.client: this httpx cannot bound a whole HTTP try by the deadline",
            RuntimeWarning,
            stacklevel=3,
        )
        return transport
    pool._network_backend = _Backend(backend)
    return transport


def environment_proxies() -> dict[str, str | None]:
    """httpx's URL patterns -> proxy URL, or None where NO_PROXY says to connect directly:
    what httpx itself reads from the environment when given no transport."""
    found = getproxies()
    proxies: dict[str, str | None] = {}
    for scheme in ("http", "https", "all"):
        if url := found.get(scheme):
            proxies[f"{scheme}://"] = url if "://" in url else f"http://{url}"
    for host in (h.strip() for h in found.get("no", "").split(",")):
        if host == "*":
            return {}
        if host:
            proxies[_no_proxy_pattern(host)] = None
    return proxies


def _no_proxy_pattern(host: str) -> str:
    """A NO_PROXY entry as httpx matches it (curl's rules): an address or ``localhost``
    exactly, ``.example.com`` its subdomains, ``example.com`` itself and its subdomains."""
    if "://" in host:
        return host
    for kind, form in ((ipaddress.IPv4Address, "{}"), (ipaddress.IPv6Address, "[{}]")):
        try:
            kind(host.split("/")[0])
        except ValueError:
            continue
        return "all://" + form.format(host)
    return f"all://{host}" if host.lower() == "localhost" else f"all://*{host}"


def deadline_mounts(verify: ssl.SSLContext | bool) -> dict[str, httpx.BaseTransport | None]:
    """``httpx.Client(mounts=...)`` for the environment's proxies: a deadline transport
    through each proxy, None (the client's own transport, direct) where NO_PROXY says."""
    return {
        pattern: None if url is None else deadline_transport(verify, url)
        for pattern, url in environment_proxies().items()
    }
