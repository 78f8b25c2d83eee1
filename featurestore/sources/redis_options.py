"""The options of a Redis store (``stores.<name>`` with ``kind: redis``): where it is,
how to authenticate (an ACL user, or AUTH with a password) and TLS (``rediss://``)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr
from redis.connection import parse_url

from featurestore import tls_files
from featurestore.addresses import check_address, check_redis_query
from featurestore.errors import FailedPrecondition
from featurestore.settings import store_options
from featurestore.sources.redis_batch import HOLD_ITERATIONS


@dataclass(frozen=True, slots=True)
class RedisOptions:
    url: str = "redis://127.0.0.1:6379/0"  # rediss://: TLS
    cluster: bool = False
    pool_size: int = 64
    connect_timeout_ms: int = 250
    health_interval_ms: int = 500
    write_batch: int = 2000
    auto_pipeline: bool = True  # the MGETs of one event-loop tick in one write (sources/redis_batch.py)
    # loop iterations a write of gRPC calls' reads may wait for more (0: never; redis_batch.py)
    hold_iterations: int = HOLD_ITERATIONS
    username: str = ""  # an ACL user (Redis 6+); empty: the default user
    password: SecretStr = SecretStr("")  # or password_file (docs/security.md)
    ssl_ca_file: str = ""  # rediss://: the CA of the server's certificate (default: the system's)
    ssl_cert_file: str = ""  # rediss://: a client certificate, for servers with tls-auth-clients
    ssl_key_file: str = ""
    ssl_check_hostname: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.password, str):  # given in code rather than through the config
            object.__setattr__(self, "password", SecretStr(self.password))
        given: object = self.auto_pipeline
        if isinstance(given, str):  # from the environment
            flag = given.strip().lower()
            if flag not in ("true", "false"):
                raise ValueError(f"auto_pipeline: expected true or false, got {given!r}")
            object.__setattr__(self, "auto_pipeline", flag == "true")
        _check_types(self)
        tls = urlsplit(self.url).scheme == "rediss"
        ssl = [n for n in ("ssl_ca_file", "ssl_cert_file", "ssl_key_file") if getattr(self, n)]
        if not tls and ssl:
            raise ValueError(f"{ssl[0]}: ssl_* options need a rediss:// url")
        if bool(self.ssl_cert_file) != bool(self.ssl_key_file):
            raise ValueError("ssl_cert_file and ssl_key_file go together")

    @staticmethod
    def from_mapping(options: dict[str, Any]) -> RedisOptions:
        known = {f.name for f in fields(RedisOptions)}
        unknown = sorted(set(options) - known)
        if unknown:
            # the option first: a variable that set it is named (settings.describe)
            raise ValueError(f"{unknown[0]}: unknown redis store option; known: {', '.join(sorted(known))}")
        return RedisOptions(**store_options(RedisOptions, options))

    def check_files(self, store: str) -> None:
        """The TLS files load (CA, certificate and unencrypted key), or the start fails
        naming ``stores.<store>.<option>`` and the path: redis-py reads them at the first
        connect, and said only ``[Errno 2] No such file or directory``."""
        if urlsplit(self.url).scheme == "rediss":
            names = ("ssl_ca_file", "ssl_cert_file", "ssl_key_file")
            tls_files.check_set({f"stores.{store}.{n}": getattr(self, n) for n in names})
            self._check_url_files(store)

    def _check_url_files(self, store: str) -> None:
        """The URL's ``ssl_ca_certs``, ``ssl_certfile`` and ``ssl_keyfile``, named
        ``stores.<store>.url: ssl_keyfile <path>`` (never the URL: it may hold a password).
        Each wins over its ``ssl_*`` option, as the connections merge them; with no key
        anywhere the certificate's file holds it, as redis-py loads it. (A key with no
        certificate fails every connect in redis-py: refused.)"""
        parsed: dict[str, Any] = parse_url(self.url)  # type: ignore[no-untyped-call]
        query = {k: str(v) for k, v in parsed.items() if k in _URL_FILES and v}

        def given(url_name: str, option: str) -> tuple[str, str] | None:
            if url_name in query:
                return (f"stores.{store}.url: {url_name}", query[url_name])
            value: str = getattr(self, option)
            return (f"stores.{store}.{option}", value) if value else None

        if "ssl_ca_certs" in query:
            tls_files.check_ca(f"stores.{store}.url: ssl_ca_certs", query["ssl_ca_certs"])
        if "ssl_certfile" in query or "ssl_keyfile" in query:
            cert = given("ssl_certfile", "ssl_cert_file")
            if cert is None:  # redis-py fails every connect with a TypeError, naming nothing
                setting, path = query["ssl_keyfile"], f"stores.{store}.url: ssl_keyfile"
                raise FailedPrecondition(
                    f"{path} {setting}: a client key without a certificate: give the URL's "
                    f"ssl_certfile or stores.{store}.ssl_cert_file too"
                )
            key = given("ssl_keyfile", "ssl_key_file")
            if key is None and not _holds_key(cert[1]):  # (check_pair(cert, cert) named it twice)
                raise FailedPrecondition(
                    f"{cert[0]} {cert[1]}: holds no private key: give the URL's ssl_keyfile "
                    f"or stores.{store}.ssl_key_file"
                )
            tls_files.check_pair(cert, key or cert)

    def connection_kwargs(self) -> dict[str, Any]:
        """redis-py's connection arguments for the credentials, TLS and TCP keepalive (a
        user or password in the URL wins over these)."""
        # TCP keepalive finds a peer gone without a word (a host down, a NAT dropping the
        # flow) on idle pooled sockets. A unix socket has no such option: redis-py's
        # unix connection refuses the argument, which failed every read (not the probe).
        kwargs: dict[str, Any] = {"socket_keepalive": True} if urlsplit(self.url).scheme in _TCP else {}
        if self.username:
            kwargs["username"] = self.username
        if self.password.get_secret_value():
            kwargs["password"] = self.password.get_secret_value()
        if urlsplit(self.url).scheme == "rediss":
            kwargs["ssl_check_hostname"] = self.ssl_check_hostname
            if self.ssl_ca_file:
                kwargs["ssl_ca_certs"] = self.ssl_ca_file
            if self.ssl_cert_file:
                kwargs.update(ssl_certfile=self.ssl_cert_file, ssl_keyfile=self.ssl_key_file)
        return kwargs


# Smallest accepted value of each integer option (redis-py would fail later, or spin):
# checked with the config, so a bad value fails the start naming the option.
_MINIMUM = {
    "pool_size": 1,
    "connect_timeout_ms": 1,
    "health_interval_ms": 10,
    "write_batch": 1,
    "hold_iterations": 0,
}
_TCP = ("redis", "rediss")
_URL_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_SCHEMES = (*_TCP, "unix")


def _check_types(options: RedisOptions) -> None:
    for name, low in _MINIMUM.items():
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    for f in fields(RedisOptions):
        value = getattr(options, f.name)
        if f.type == "bool" and not isinstance(value, bool):
            raise ValueError(f"{f.name}: expected true or false, got {value!r}")
        if f.type == "str" and not isinstance(value, str):
            raise ValueError(f"{f.name}: expected a string, got {type(value).__name__}")
    scheme = urlsplit(options.url).scheme
    if scheme not in _SCHEMES:  # only the scheme: the rest of a URL may hold a password
        raise ValueError(f"url: unsupported scheme {scheme!r}; use redis://, rediss:// or unix://")
    if scheme in _TCP:
        check_address(options.url, "url")
    check_redis_query(options.url, "url")


def _holds_key(path: str) -> bool:
    """Whether a PEM file has a private key block (a certificate given without a key:
    redis-py loads the key from the certificate's file)."""
    try:
        with open(path, "rb") as f:
            return b"PRIVATE KEY-----" in f.read()
    except OSError:
        return True  # (check_pair names the file and what is wrong with it)
