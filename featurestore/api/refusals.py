"""Answers the HTTP connection guard writes itself, outside any request cycle: a 400 for
bytes that are not HTTP/1.1, a 408 for a head that never arrived, a 431 for one too
large (``connections.py``). Each is the API's JSON error with ``connection: close``."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from featurestore.api import json_codec
from featurestore.errors import FeatureStoreError

REASON_PHRASES = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
}

# How long a refused connection stays open after its answer, reading and dropping what
# the client still sends, until the client closes its side: a close with unread bytes
# in the socket is a TCP reset, and a reset can destroy the answers sent just before
# it (the client's kernel drops what its application has not read yet). nginx lingers
# up to 30 s (lingering_time); the guard's sweep ends it between this and one tick more.
LINGER_SECONDS = 2.0


def response(status: int, error: FeatureStoreError) -> bytes:
    """The whole HTTP/1.1 response refusing a request with ``status`` and ``error``."""
    body = json_codec.encode_error(error.to_dict())
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (status, REASON_PHRASES[status], len(body), body)
    )


def app(
    status: int, error: FeatureStoreError, counted: Callable[[], None], retry_after: int | None
) -> ASGIApp:
    """An ASGI app answering a request ``status`` with ``error`` and ``connection: close``
    (uvicorn then closes at once: no lingering), calling ``counted`` first: the refusals
    of a whole head (a 431 too large, a 503 over the connection limit)."""
    body = json_codec.encode_error(error.to_dict())
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    if retry_after is not None:
        headers.append((b"retry-after", b"%d" % retry_after))

    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        counted()
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return refuse
