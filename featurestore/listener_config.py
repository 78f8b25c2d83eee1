"""The listeners' sections of the configuration (``http``, ``grpc``, ``tls``) and the
addresses they bind: each listener needs a port of its own.

A supervised worker binds with SO_REUSEPORT (``supervisor.py``), so the kernel would let
two of its own listeners share a port and split the connections between them: equal
ports are refused here, where one process would fail to bind them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Annotated

from featurestore.settings import Count, Integer, Port, Seconds, SettingError, up_to

# listen(2) takes an int, and the kernel silently caps the queue at net.core.somaxconn
# (4096 by default since Linux 5.4): 65535, 16 times that, is more than a worker accepts
# in a burst (a value past a C int crashed the start with an OverflowError: review s55).
MAX_BACKLOG = 65535
Backlog = Annotated[Integer, up_to(MAX_BACKLOG)]


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The HTTP listener and what a connection may hold of it (docs/configuration.md)."""

    host: str = "127.0.0.1"
    port: Port = 8080
    # /healthz, /readyz and /metrics on their own plain-HTTP port (same host), and only
    # there: probes and Prometheus need neither TLS nor a token. None: on `port`.
    admin_port: Port | None = None
    # Longer than common load-balancer idle timeouts (60 s), so the balancer closes an
    # idle connection first instead of sending a request into one the server is closing.
    keep_alive_seconds: Seconds = 75.0
    # from accept, or the request's first byte, to its last header; with TLS, also the
    # handshake's own bound (the clock above then starts when the handshake ends)
    header_timeout_seconds: Seconds = 10.0
    body_timeout_seconds: Seconds = 30.0  # from the last header to the end of the body (4 MiB at 140 KB/s)
    # A response the client stops reading (the send buffer stays full) this long: the
    # connection is aborted, so a client that never reads cannot hold a response's memory.
    write_timeout_seconds: Seconds = 30.0
    max_header_bytes: Count = 16384  # request line + headers (431 above); the size h11 and Node allow
    max_connections: Count = 1000  # per worker; keep well below `ulimit -n`
    backlog: Backlog = 4096  # listen queue per socket; the kernel caps it at net.core.somaxconn


@dataclass(frozen=True, slots=True)
class GrpcConfig:
    """The gRPC listener and grpc core's connection limits (docs/configuration.md)."""

    host: str = "127.0.0.1"
    port: Port = 50051
    max_connection_idle_seconds: Seconds = 300.0  # no call for this long: GOAWAY, the client reconnects
    max_connection_age_seconds: Seconds = 1800.0  # GOAWAY (+-10% jitter): spreads clients over workers
    max_connection_age_grace_seconds: Seconds = 30.0  # for calls in flight after that GOAWAY
    keepalive_seconds: Seconds = 60.0  # server pings an idle connection; a dead peer goes after the timeout
    keepalive_timeout_seconds: Seconds = 20.0
    # A client may ping this often, with or without calls in flight (grpc's own default
    # allows one ping per 5 min, which disconnects clients that keep idle channels alive
    # with a keepalive of 10-60 s); faster pings are strikes.
    min_ping_interval_seconds: Seconds = 10.0
    max_ping_strikes: Count = 2  # then GOAWAY ENHANCE_YOUR_CALM ("too_many_pings")
    max_metadata_bytes: Count = 16384  # request metadata (headers); above it RESOURCE_EXHAUSTED
    handshake_timeout_seconds: Seconds = 10.0  # accept to the end of the HTTP/2 handshake
    max_concurrent_streams: Count = 1024  # calls open on one connection (grpc's default: unbounded)
    # Join as a unary handler (grpc reads the message first), not client-streaming (the handler
    # runs from the call's start): less CPU a call, but a call that dies waiting for the event
    # loop before its message is read is not counted (api/grpc.py).
    unary_join: bool = False
    # Join take-ups besides grpc.aio's; 0: none (the stop starts its own: api/grpc_intake.py)
    intake_loops: Annotated[Integer, up_to(1024, zero=True)] = 16


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS of the HTTP and gRPC listeners (docs/security.md); empty: plaintext."""

    cert_file: str = ""  # PEM certificate chain
    key_file: str = ""  # PEM private key
    client_ca_file: str = ""  # mutual TLS: clients must present a certificate signed by this CA

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)


@dataclass(frozen=True, slots=True)
class Listener:
    setting: str  # the port's setting, e.g. "http.admin_port"
    kind: str  # "HTTP" or "gRPC", as the bind errors say
    host: str
    port: int


def listeners(http: HttpConfig, grpc: GrpcConfig) -> list[Listener]:
    """The addresses a serving process binds, in the order it binds them."""
    found = [Listener("grpc.port", "gRPC", grpc.host, grpc.port)]
    if http.admin_port is not None:
        found.append(Listener("http.admin_port", "HTTP", http.host, http.admin_port))
    found.append(Listener("http.port", "HTTP", http.host, http.port))
    return found


def check_ports(http: HttpConfig, grpc: GrpcConfig) -> None:
    """Refuse two listeners on one port where their hosts can overlap, naming both settings."""
    found = sorted(listeners(http, grpc), key=lambda ln: _ORDER.index(ln.setting))
    for i, listener in enumerate(found):
        for other in found[:i]:
            if listener.port == other.port and hosts_overlap(listener.host, other.host):
                hosts = (
                    ""
                    if listener.host == other.host
                    else f" (hosts {other.host!r} and {listener.host!r} overlap)"
                )
                raise SettingError(
                    listener.setting,
                    f"{listener.port} is also {other.setting}{hosts}; each listener needs a port of its own",
                    others=(other.setting,),
                )


_ORDER = ("http.port", "http.admin_port", "grpc.port")  # the order errors name them in


def hosts_overlap(a: str, b: str) -> bool:
    """Whether two listen hosts can share an address: the same address, a wildcard (all
    addresses), or a name (it may resolve to the other). Two distinct addresses cannot."""
    first, second = _address(a), _address(b)
    if first is None or second is None:
        return True
    return first == second or first.is_unspecified or second.is_unspecified


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip().strip("[]") or "0.0.0.0")  # "": every address
    except ValueError:
        return None
