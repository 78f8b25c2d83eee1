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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import ParseResult, urlparse

import aetcd
import grpc
from aetcd import rpc, watcher
from aetcd.client import _handle_errors  # grpc errors -> aetcd's exceptions, as its connect

# gRPC options of every etcd client. By default all channels of a process to one target
# share a subchannel, and with it gRPC's reconnect backoff (1 s, growing 1.6x up to
# 120 s): a client made after an outage inherited the outage's "connection refused"
# for seconds after etcd was back, and a worker swapped to a snapshot published then
# 1.4-4.1 s late (tests/integration/test_etcd_reconnect.py; 0.02-0.13 s with these).
CHANNEL_OPTIONS = {
    "grpc.use_local_subchannel_pool": 1,  # a new client is a new connection attempt
    "grpc.initial_reconnect_backoff_ms": 100,  # a client kept through an outage heals as fast
    "grpc.max_reconnect_backoff_ms": 500,
}


@dataclass(frozen=True, slots=True)
class EtcdAccess:
    """Credentials and TLS of every etcd client of a registry. TLS when the endpoints
    are https:// or a CA is given."""

    username: str = ""
    password: str = ""
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

    def channel_credentials(self) -> grpc.ChannelCredentials:
        def read(path: str) -> bytes | None:
            if not path:
                return None
            with open(path, "rb") as f:
                return f.read()

        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file), read(self.cert_file))


def endpoints_of(endpoints: Sequence[str]) -> list[ParseResult]:
    return [urlparse(e if "://" in e else f"http://{e}") for e in endpoints]


def make_client(
    endpoint: ParseResult, access: EtcdAccess, tls: bool, timeout: float, options: Any
) -> aetcd.Client:
    host, port = endpoint.hostname or "127.0.0.1", endpoint.port or 2379
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
