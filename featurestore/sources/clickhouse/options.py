"""The options of a ``kind: clickhouse`` store, checked when the configuration is read:
a bad value fails the start naming the option, never a later call."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from featurestore.addresses import check_address
from featurestore.errors import FailedPrecondition, InvalidArgument
from featurestore.settings import store_options

# The database name is spliced into SQL (identifiers cannot be bound), so it must be
# a plain identifier.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Smallest accepted value of each integer option: a zero health interval would spin,
# a zero timeout would fail every call.
_MINIMUM = {"threads": 1, "max_queued": 0, "health_interval_ms": 10, "timeout_ms": 10}


@dataclass(frozen=True, slots=True)
class ClickHouseOptions:
    dsn: str = "chdb://data/clickhouse"  # chdb://<dir> (in-process) or http(s)://user:pass@host:8123
    database: str = "featurestore"
    threads: int = 4
    max_queued: int = 16  # reads waiting for a thread beyond this fail at once
    health_interval_ms: int = 1000
    # Bounds every call: HTTP connect and send/receive timeouts (whole seconds, rounded
    # up), max_execution_time of reads and the health probe's wait.
    timeout_ms: int = 5000
    # ClickHouse over HTTP(S): the user and its password (a secret: `password_file`, or
    # FEATURESTORE_STORES__<NAME>__PASSWORD_FILE), instead of user:pass in the DSN
    username: str = ""
    password: SecretStr = SecretStr("")
    # https:// only: the PEM file of the CA that signed the server's certificate
    # (default: the system's CAs)
    ca_file: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.password, str):  # built in code rather than from the config
            object.__setattr__(self, "password", SecretStr(self.password))
        for name, low in _MINIMUM.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
        if not isinstance(self.dsn, str) or not self.dsn:
            raise ValueError(f"dsn: expected chdb://DIR or http(s)://host:port, got {self.dsn!r}")
        if not isinstance(self.database, str) or not _IDENTIFIER.fullmatch(self.database):
            raise ValueError(f"database: expected a name of letters, digits and _, got {self.database!r}")
        if not isinstance(self.ca_file, str):
            raise ValueError(f"ca_file: expected a path, got {self.ca_file!r}")
        if _scheme(self.dsn) in ("http", "https"):
            check_address(self.dsn, "dsn")
        if self.ca_file and _scheme(self.dsn) != "https":
            # a CA with a plaintext DSN would be ignored and the password sent in clear
            raise ValueError("ca_file: set, but the dsn is not https://; use https://host:port for TLS")

    @staticmethod
    def from_mapping(options: dict[str, Any]) -> ClickHouseOptions:
        """Options from a store's configuration; a ValueError names the bad option."""
        known = set(ClickHouseOptions.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            # the option first: a variable that set it is named (settings.describe)
            raise ValueError(
                f"{unknown[0]}: unknown clickhouse store option; known: {', '.join(sorted(known))}"
            )
        # A configured store's scheme fails the start; a --clickhouse-dsn's (offline.py
        # builds options from it) fails in client_args.
        dsn = options.get("dsn")
        if isinstance(dsn, str) and _scheme(dsn) not in _SCHEMES:
            raise ValueError(_bad_scheme(dsn))
        return ClickHouseOptions(**store_options(ClickHouseOptions, options))

    @property
    def client_dsn(self) -> str:
        if self.dsn.startswith("chdb://"):
            # chdb compares engine paths literally: always hand it one absolute spelling
            return f"chdb://{Path(self.dsn.removeprefix('chdb://')).resolve()}"
        return self.dsn

    def client_args(self) -> dict[str, Any]:
        """``clickhouse_connect.get_client``'s arguments for this server: the DSN, the
        interface the scheme names, and the user and password when set (they take
        precedence over any in the DSN). clickhouse-connect ignores a DSN's scheme and
        infers TLS from the port (443 and 8443 only), so ``https://ch.internal`` would
        send the password in clear to port 8123 without ``interface``."""
        args: dict[str, Any] = {"dsn": self.client_dsn}
        if self.embedded:
            return args
        scheme = _scheme(self.dsn)
        if scheme not in ("http", "https"):
            raise InvalidArgument(_bad_scheme(self.dsn))
        args["interface"] = scheme
        args["secure"] = scheme == "https"
        if self.ca_file:
            args["ca_cert"] = self.ca_file
        if self.username:
            args["username"] = self.username
        if self.password.get_secret_value():
            args["password"] = self.password.get_secret_value()
        return args

    @property
    def embedded(self) -> bool:
        return self.dsn.startswith("chdb://")


_SCHEMES = ("chdb", "http", "https")


def _scheme(dsn: str) -> str:
    return urlsplit(dsn).scheme.lower() if isinstance(dsn, str) and "://" in dsn else ""


def _bad_scheme(dsn: str) -> str:
    # only the scheme: the rest of a DSN may hold a password
    return f"dsn: unsupported scheme {_scheme(dsn)!r}; use chdb://DIR or http(s)://user:pass@host:8123"


def check_embedded_workers(options: ClickHouseOptions, workers: int) -> None:
    if options.embedded and workers > 1:
        raise FailedPrecondition(
            "an embedded ClickHouse (chdb://) store lives inside one process: serve it with --workers 1, "
            "or point the store at a ClickHouse server (http://)"
        )
