"""The host and port of a store's URL or DSN, and a Redis URL's query options, checked
when its options are built: a bad one failed later, and badly (Redis: redis-py's
``ValueError`` as a traceback, exit 1, a restart loop under the supervisor; ClickHouse:
a store "down" for ever).

Only the scheme, host, port and query are looked at and only the port is ever quoted,
and only when the URL separates its credentials with ``@``: in ``redis://:S3cret/0``
(``@host`` forgotten) what follows the ``:`` is the password."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

# A host name or an IPv4 address (RFC 1123 letters, digits, '-', '.'; '_' as resolvers
# take it), or an IPv6 address in brackets (hex, ':', '.', a '%zone').
_HOST = re.compile(r"[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+(%[A-Za-z0-9._-]+)?\]")
HIGHEST_PORT = 65535


def check_address(url: str, option: str) -> None:
    """Raise ValueError, ``<option>: ...``, when the URL's host or port cannot be used."""
    try:
        netloc = urlsplit(url).netloc
    except ValueError:  # e.g. an unclosed '[' of an IPv6 address
        raise ValueError(f"{option}: not a URL of the form scheme://[user:password@]host:port") from None
    path = re.split("[?#]", url.partition("://")[2][len(netloc) :], maxsplit=1)[0]
    if "@" not in netloc and "@" in path:  # (an '@' in the query or fragment is a value's)
        # the host part ended at a '/' of the password: what follows is no host
        raise ValueError(
            f"{option}: an '@' after the host part: a '/', '?' or '#' in the user or password "
            "must be percent-encoded (%2F, %3F, %23) (not shown)"
        )
    _, at, hostport = netloc.rpartition("@")
    if hostport.startswith("["):
        host, _, rest = hostport.partition("]")
        host, colon, port = host + "]", rest[:1], rest[1:]
    else:
        host, colon, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    shown = f" {port!r}" if at else ""  # (without '@' the port field may be a password)
    if colon and not (port.isascii() and port.isdigit() and len(port) <= 5):
        hidden = (
            ""
            if at
            else (
                " (not shown: with no user@ part it may be a password; a '/', '?' or '#' in a"
                " password must be percent-encoded: %2F, %3F, %23)"
            )
        )
        raise ValueError(f"{option}: port{shown} is not a number{hidden}")
    if colon and not 1 <= int(port) <= HIGHEST_PORT:
        raise ValueError(f"{option}: port{shown} is out of range 1-{HIGHEST_PORT}")
    if host and not _HOST.fullmatch(host):  # (none: the client's default, localhost)
        raise ValueError(f"{option}: the host is not a host name or an IP address (not shown)")


# What the Redis read path takes from a store's URL (sources/redis_connection.py): any
# other option fails the store, so it fails the config's load first.
REDIS_URL_OPTIONS = frozenset(
    {"host", "port", "db", "username", "password", "path", "connection_class", "client_name"}
    | {"socket_connect_timeout"}
    | {"ssl_cert_reqs", "ssl_check_hostname", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"}
)
# redis-py's timing options, which the URL may carry for the store's other clients: reads
# have no socket timeout (the join's deadline bounds them) and no health checks (the
# store's probe does that), so the read path leaves them out; keepalive is always on.
REDIS_URL_IGNORED = ("socket_timeout", "health_check_interval", "retry_on_timeout", "socket_keepalive")

# Query options that redis-py takes as text and looks up only at the first TLS connect
# (in lower case; the read path, redis_connection._tls_context, any case): a bad one
# was a KeyError traceback in every worker.
REDIS_URL_CHOICES = {"ssl_cert_reqs": ("none", "optional", "required")}


def check_redis_query(url: str, option: str) -> None:
    """Raise ValueError, ``<option>: query option 'x' is not valid``, for a value of the
    URL's query that redis-py's ``parse_url`` refuses (``?socket_timeout=abc``). The
    value is not shown."""
    from redis.connection import URL_QUERY_ARGUMENT_PARSERS  # (a Redis store's: imported for one)

    for name, values in parse_qs(urlsplit(url).query).items():  # as parse_url reads it
        if name not in REDIS_URL_OPTIONS and name not in REDIS_URL_IGNORED:
            raise ValueError(f"{option}: query option {name!r} is not supported (docs/storage.md lists them)")
        choices = REDIS_URL_CHOICES.get(name)
        if choices is not None and values and values[0] not in choices:
            wanted = ", ".join(choices)  # (the value is not shown, as none of a URL's)
            raise ValueError(f"{option}: query option {name!r} is not valid: expected one of {wanted}")
        parser: Any = URL_QUERY_ARGUMENT_PARSERS.get(name)
        try:
            if parser is not None and values:
                parser(values[0])
        except (TypeError, ValueError):
            wanted = _EXPECTED.get(parser, "a value redis-py takes")
            raise ValueError(f"{option}: query option {name!r} is not valid: expected {wanted}") from None


_EXPECTED: dict[Any, str] = {int: "an integer", float: "a number"}
