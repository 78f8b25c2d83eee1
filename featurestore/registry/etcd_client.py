"""How the etcd registry reaches etcd: endpoints, user and password, TLS.

aetcd authenticates with a user and password itself, but always opens a plaintext
channel (``aetcd.Client.connect`` calls ``rpc.insecure_channel``). ``TlsClient`` is
aetcd's client with that one call replaced by a TLS channel: ``connect`` below is
aetcd 1.0's, line for line, but for the channel. It relies on aetcd's attributes
``_connected``, ``_is_connecting``, ``_connect_wait_timeout``, ``_host``, ``_port``,
``_options``, ``_username``, ``_password``, ``_timeout`` and ``_watcher``, and
its private decorator ``aetcd.client._handle_errors``;
``tests/integration/test_etcd_tls.py`` fails when aetcd's ``connect`` changes, and runs
the registry over TLS with a user against a real etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import ParseResult, urlparse

import aetcd
import grpc
from aetcd import exceptions as etcd_errors
from aetcd import rpc, watcher
from aetcd.client import _handle_errors  # grpc errors -> aetcd's exceptions, as its connect

from featurestore import tls_files
from featurestore.errors import FeatureStoreError, PermissionDenied, Unauthenticated, Unavailable
from featurestore.registry.base import RegistryHealth
from featurestore.registry.limits import refusal, rpc_code, rpc_details

ERRORS = (etcd_errors.ClientError, OSError)  # a lost connection

# gRPC options of every etcd client. By default all channels of a process to one target
# share a subchannel, and with it gRPC's reconnect backoff (1 s, growing 1.6x up to
# 120 s): a client made after an outage inherited the outage's "connection refused"
# for seconds after etcd was back, and a worker swapped to a snapshot published then
# 1.4-4.1 s late (tests/integration/test_etcd_reconnect.py; 0.02-0.13 s with these).
CHANNEL_OPTIONS = {
    "grpc.use_local_subchannel_pool": 1,  # a new client is a new connection attempt
    "grpc.initial_reconnect_backoff_ms": 100,  # a client kept through an outage heals as fast
    "grpc.max_reconnect_backoff_ms": 500,
    # gRPC's client takes 4 MiB messages by default: a snapshot etcd accepted under a
    # raised --max-request-bytes (registry.max_request_bytes) must be readable too
    "grpc.max_receive_message_length": -1,
    # A peer gone without a reset (a host powered off, a network partition) left a quiet
    # watch waiting until the kernel gave up on the connection (~15 min). gRPC pings etcd
    # every 10 s while a call is open and drops the connection when a ping goes unanswered
    # for 5 s (the watch then fails and is re-established on a new client). etcd refuses
    # pings more often than every 5 s (--grpc-keepalive-min-time) and any ping while no
    # call is open: hence no keepalive_permit_without_calls.
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    # gRPC 1.85 times a keepalive ping out by this one (60 s by default), not by the above
    # (tests/integration/test_etcd_watch_health.py fails without it); at least this, see
    # channel_options
    "grpc.http2.ping_timeout_ms": 5_000,
    "grpc.http2.max_pings_without_data": 0,  # a quiet watch sends no data: ping on anyway
}


def channel_options(timeout: float) -> dict[str, Any]:
    """``CHANNEL_OPTIONS`` for a client whose calls may take ``timeout`` seconds.

    gRPC's ping timeout is met by the ping's ack only, never by data, and applies to
    every ping, also those gRPC sends while a response streams in (its bandwidth
    probe): etcd queues the ack behind the response it is sending, so a response that
    takes longer than the ping timeout to arrive is cut ("ping timeout") whatever the
    call's deadline. Measured: a 0.87 MB snapshot over a 120 KB/s link (7 s), cut
    after 5.1 s (tests/integration/test_etcd_limits.py). A read must arrive within
    ``timeout`` anyway, so the ping timeout is twice that (a watch event and the read
    of the same snapshot may share the link), never below 5 s: with the default 2 s a
    silent connection is still dropped 10 + 5 s after its last byte, with a longer
    ``timeout`` T after 10 + 2T s."""
    return {**CHANNEL_OPTIONS, "grpc.http2.ping_timeout_ms": max(5_000, round(2_000 * timeout))}


# etcd's answers to a request whose auth token no longer holds: unknown or expired (a
# JWT past its ttl; a simple token dropped after its TTL unused, the user's password
# set, an etcd restart), issued before the last change of users, roles or
# permissions (a JWT carries the auth revision), or missing. aetcd authenticates once,
# in ``connect``: only a new client (``EtcdLink.renew``) gets a new token. A watch etcd
# cancels for one of these says so in its cancel reason.
_AUTH_EXPIRED = ("invalid auth token", "revision of auth store is old", "user name is empty")


def auth_expired(message: str) -> bool:
    """Does etcd's error ``message`` say that the client's auth token no longer holds?"""
    return any(m in message for m in _AUTH_EXPIRED)


# etcd's answers to credentials it does not take: a wrong user or password (INVALID_ARGUMENT,
# "authentication failed, invalid user ID or password"), or none sent to an etcd with
# authentication on (an auth token it no longer takes, when the client has no user).
_NOT_AUTHENTICATED = ("authentication failed", *_AUTH_EXPIRED)


def auth_refusal(error: BaseException, prefix: str = "/featurestore/<project>/") -> FeatureStoreError | None:
    """etcd refusing the registry's user: its credentials (UNAUTHENTICATED) or access to a
    key (PERMISSION_DENIED); None for any other error. etcd answered (no lost connection),
    and no retry helps until the configuration or etcd's users and roles change. (etcd's
    messages never repeat the password.) An expired token is ``EtcdLink.call``'s to renew."""
    code, text = rpc_code(error), rpc_details(error)
    if code is grpc.StatusCode.PERMISSION_DENIED or "permission denied" in text:
        return PermissionDenied(
            f"etcd registry: {text}: etcd's roles do not give the registry user (registry.username) "
            "access to the project's keys; grant it read (servers) or readwrite (apply, canary, "
            f"materialize) on the prefix {prefix} (docs/security.md)"
        )
    if code is grpc.StatusCode.UNAUTHENTICATED or any(m in text for m in _NOT_AUTHENTICATED):
        return Unauthenticated(
            f"etcd registry: {text}: etcd does not take the registry's credentials; check "
            "registry.username and registry.password (or password_file)"
        )
    return None


@dataclass(frozen=True, slots=True)
class EtcdAccess:
    """Credentials and TLS of every etcd client of a registry. TLS when the endpoints
    are https:// or a CA is given."""

    username: str = ""
    password: str = field(default="", repr=False)
    ca_file: str = ""  # empty with https://: the system's CAs
    cert_file: str = ""  # client certificate (etcd's --client-cert-auth), with key_file
    key_file: str = ""

    def tls(self, endpoints: Sequence[ParseResult]) -> bool:
        return bool(self.ca_file or self.cert_file) or any(e.scheme == "https" for e in endpoints)

    def check(self) -> None:
        if bool(self.username) != bool(self.password):
            raise ValueError("registry.username and registry.password go together")
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("registry.cert_file and registry.key_file go together")
        names = ("ca_file", "cert_file", "key_file")  # grpc reads them, an encrypted key fails at connect
        tls_files.check_set({f"registry.{n}": getattr(self, n) for n in names})

    def channel_credentials(self) -> grpc.ChannelCredentials:
        def read(path: str) -> bytes | None:
            if not path:
                return None
            with open(path, "rb") as f:
                return f.read()

        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file), read(self.cert_file))


class EtcdLink:
    """One registry's connection to etcd: one aetcd client at a time (``reconnect``
    replaces it, moving to the next endpoint), and what its calls say about the
    connection (``health``)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        access: EtcdAccess,
        timeout: float,
        max_request_bytes: int,
        prefix: str = "/featurestore/<project>/",
    ) -> None:
        """``prefix``: the project's keys, named when etcd refuses the user access."""
        if not endpoints:
            raise ValueError("etcd registry needs at least one endpoint")
        self._endpoints = endpoints_of(endpoints)
        access.check()
        self._access = access
        self._tls = access.tls(self._endpoints)
        self.timeout = timeout  # of each call, and of etcd confirming a watch
        self.max_request_bytes = max_request_bytes  # etcd's --max-request-bytes
        self.prefix = prefix
        self._endpoint = 0
        self.client = self._connect()
        self.connected = False
        self.last_contact = 0.0

    def _connect(self) -> aetcd.Client:
        ep = self._endpoints[self._endpoint % len(self._endpoints)]
        return make_client(ep, self._access, self._tls, self.timeout, channel_options(self.timeout))

    def health(self) -> RegistryHealth:
        age = time.monotonic() - self.last_contact if self.last_contact else float("inf")
        return RegistryHealth(connected=self.connected, seconds_since_contact=age)

    def touch(self) -> None:
        """etcd answered."""
        self.connected = True
        self.last_contact = time.monotonic()

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One etcd call; connection failures become ``Unavailable``, etcd's refusals
        (a request too large, a full database, credentials or a permission it refuses)
        errors that no retry helps, which leave the registry connected (etcd answered).

        grpc.aio ends a call in flight on a channel that is closed (the watch failed and
        ``reconnect`` replaced the client) with ``CancelledError``, although nobody
        cancelled the caller: that is a lost connection too. Left as it was, it ended
        the server's registry-apply task for good (an ``except Exception`` lets it by).

        An auth token etcd no longer takes (``auth_expired``) fails this call, and
        the client is replaced (a new token) for the next ones: the caller retries."""
        client = self.client
        try:
            result = await fn(*args, **kwargs)
        except (*ERRORS, grpc.aio.AioRpcError) as e:
            if self.authenticates and isinstance(e, ERRORS) and auth_expired(str(e)):
                self.last_contact = time.monotonic()  # etcd answered
                await self.renew(client)
                raise Unavailable(f"etcd registry: authenticating again: {e}") from e
            refused = refusal(e, self.max_request_bytes) or auth_refusal(e, self.prefix)
            if refused is not None:
                self.touch()  # etcd answered: connected
                raise refused from e
            if not isinstance(e, ERRORS):
                raise
            self.connected = False
            raise Unavailable(f"etcd registry: {type(e).__name__}: {e}") from e
        except asyncio.CancelledError as e:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # the caller itself is being cancelled
            self.connected = False
            raise Unavailable("etcd registry: the call was cut off (its connection was closed)") from e
        self.touch()
        return result

    @property
    def authenticates(self) -> bool:
        """With a user and password: a new client gets a new auth token."""
        return bool(self._access.username)

    async def renew(self, client: aetcd.Client) -> None:
        """Replace ``client`` (a call on it failed) by a new one: a new connection, a new
        auth token, unless another call's failure replaced it already."""
        if self.client is client:
            await self.reconnect()

    async def reconnect(self) -> None:
        """A new client on the next endpoint; the old one is closed after the swap, so
        a renewal arriving while it closes sees the new client and does not replace it
        again (two renewals of one client made two clients, the first left open)."""
        old = self.client
        self._endpoint += 1
        self.client = self._connect()
        with contextlib.suppress(*ERRORS):
            await old.close()

    async def close(self) -> None:
        with contextlib.suppress(*ERRORS):
            await self.client.close()


def endpoints_of(endpoints: Sequence[str]) -> list[ParseResult]:
    return [urlparse(e if "://" in e else f"http://{e}") for e in endpoints]


def make_client(
    endpoint: ParseResult, access: EtcdAccess, tls: bool, timeout: float, options: Any
) -> aetcd.Client:
    host, port = endpoint.hostname or "127.0.0.1", endpoint.port or 2379
    if ":" in host:  # an IPv6 address: urlparse drops the brackets gRPC's target needs
        host = f"[{host}]"
    kwargs: dict[str, Any] = {"host": host, "port": port, "timeout": timeout, "options": options}
    if access.username:
        kwargs.update(username=access.username, password=access.password)
    if tls:
        return TlsClient(access.channel_credentials(), **kwargs)
    return aetcd.Client(**kwargs)


class TlsClient(aetcd.Client):  # type: ignore[misc]
    def __init__(self, credentials: grpc.ChannelCredentials, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._credentials = credentials

    @_handle_errors  # type: ignore[untyped-decorator]
    async def connect(self) -> None:
        """aetcd's ``Client.connect`` over a TLS channel (see the module docstring)."""
        if self._connected.is_set():
            return
        if self._is_connecting:  # type: ignore[has-type]
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        try:
            self._is_connecting = True
            target = f"{self._host}:{self._port}"
            self.channel = rpc.secure_channel(target, self._credentials, options=self._options.items())
            if self._username is not None and self._password is not None:
                self.auth_stub = rpc.AuthStub(self.channel)
                auth_request = rpc.AuthenticateRequest(name=self._username, password=self._password)
                resp = await self.auth_stub.Authenticate(auth_request, timeout=self._timeout)
                self.metadata = (("token", resp.token),)
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = watcher.Watcher(
                rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()
        finally:
            self._is_connecting = False
