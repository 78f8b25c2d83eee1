"""What keeps a web page from writing into the server: the push's content type, and the
``Origin`` of requests to a write route.

A browser sends a cross-site ``POST`` without asking the server first (no CORS
preflight) when its content type is one a form can send (``text/plain``,
``application/x-www-form-urlencoded``, ``multipart/form-data``) or when it has none. The
page cannot read the answer, but the write is done: with no tokens configured (the
default) any page a user of the server opened could push feature values (review s58
F1). Two rules close it:

* a push's body must be declared ``application/json`` (parameters such as ``charset``
  allowed), or carry no content type (read as JSON, as clients that post a string
  without one, Python's ``requests`` with ``data=``, expect): any other type is a 415
  naming it, before the body is decoded;
* a request to a write route that carries an ``Origin`` other than the server's own (its
  ``host[:port]`` is neither the request's ``Host`` nor an ``X-Forwarded-Host`` value,
  compared as origins are: a port left out is the scheme's, ``:443`` for https),
  or ``Origin: null`` (a sandboxed frame, a ``file://`` page), is a 403 naming the rule,
  whatever the tokens. Browsers send ``Origin`` on every cross-site ``POST``; other
  clients send none, so nothing else is refused. A page cannot add ``X-Forwarded-Host``
  without a preflight, which the server never grants (it sends no CORS headers).

Push is the only write route: the join and ``/graphql`` read (a page cannot read their
answers), and ``/v1/registry`` is a ``GET``. What neither rule stops, DNS rebinding (a
page whose own name resolves to the server: ``Origin`` and ``Host`` agree), is for
tokens (docs/security.md, "Browsers").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from featurestore.errors import InvalidArgument, PermissionDenied, clipped

JSON_TYPE = "application/json"
CROSS_SITE = "cross_site"  # the refusal's details reason
_SCHEME_END = b"://"
_DEFAULT_PORTS = {b"http": 80, b"https": 443}


class UnsupportedMediaType(InvalidArgument):
    """A body of a content type the route does not take: INVALID_ARGUMENT, HTTP 415."""

    http_status = 415


def content_type_refused(values: Iterable[str], path: str) -> UnsupportedMediaType | None:
    """The refusal of a body declared (``values``: its ``content-type`` headers) as
    anything but ``application/json``; None when it is JSON or declares nothing."""
    for value in values:
        if value.split(";", 1)[0].strip().lower() != JSON_TYPE:
            shown = clipped(value)
            return UnsupportedMediaType(
                f"content-type {shown!r} is not supported by {path}: it takes {JSON_TYPE} "
                f"(send the header 'content-type: {JSON_TYPE}'; curl -d sends "
                "application/x-www-form-urlencoded unless told)",
                details=[{"content_type": shown, "expected": JSON_TYPE}],
            )
    return None


def origin_refused(headers: Iterable[tuple[bytes, bytes]], path: str) -> PermissionDenied | None:
    """The refusal of a request (ASGI ``headers``: lowercase names) whose ``Origin`` is
    not the server's own; None when it carries no ``Origin`` or the server's."""
    origins: list[bytes] = []
    hosts: list[bytes] = []
    for name, value in headers:
        if name == b"origin":
            origins.append(bytes(value))
        elif name == b"host" or name == b"x-forwarded-host":
            hosts += (h.strip().lower() for h in bytes(value).split(b","))
    for origin in origins:
        scheme, sep, authority = origin.strip().lower().partition(_SCHEME_END)
        default = _DEFAULT_PORTS.get(scheme, 0)
        own = _host_port(authority, default) if sep and scheme else None
        if own is None or not any(_host_port(h, default) == own for h in hosts):
            return _cross_site(origin, hosts, path)
    return None


def _host_port(authority: bytes, default_port: int) -> tuple[str, int] | None:
    """``host[:port]`` as an origin compares it (RFC 6454): the port the scheme implies
    when none is given (a proxy's ``Host: name:443`` is the origin ``https://name``), an
    IPv6 literal in its one spelling (``[0:0::1]`` is ``[::1]``); None when unreadable."""
    text = authority.decode("latin-1")
    host, port = text, ""
    if text.startswith("["):  # [v6]:port
        end = text.find("]")
        if end < 0:
            return None
        host, port = text[1:end], text[end + 1 :].removeprefix(":")
        try:
            host = ipaddress.IPv6Address(host).compressed
        except ValueError:
            return None
    elif ":" in text:
        host, _, port = text.rpartition(":")
    if port and not (port.isascii() and port.isdigit() and len(port) <= 5):  # ('²', 5,000 digits)
        return None
    return host, int(port) if port else default_port


def _cross_site(origin: bytes, hosts: list[bytes], path: str) -> PermissionDenied:
    shown = clipped(origin.decode("latin-1"))
    host = clipped(hosts[0].decode("latin-1")) if hosts else ""
    return PermissionDenied(
        f"cross-site request refused: Origin {shown!r} is not this server's origin "
        f"(Host {host!r}); {path} takes no request a web page of another site sends "
        "(a client other than a browser sends no Origin; docs/security.md, 'Browsers')",
        details=[{"reason": CROSS_SITE, "origin": shown, "host": host}],
    )
