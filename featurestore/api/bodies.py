"""Request bodies under the body limit (``limits.max_body_bytes``): read whole, refused
after being read to their end, or refused unread (and then the connection is closed).

A server that answers 413 and closes while the client is still sending makes the
client's kernel see a reset, and most clients then report "connection reset" instead of
the 413 and its message: so a body over the limit is read and discarded up to a bound
(4x the limit, at least 16 MiB) before the answer, and the connection serves the next
request. A body declared beyond that bound is not worth reading, and one whose client
waits for ``100 Continue`` has not been sent (asking for it, as uvicorn does on the
first ``receive()``, would invite the upload): both are refused unread
(``BodyUnread``), with ``CLOSE``, as the connection is not at the start of a request.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import Receive

from featurestore.errors import InvalidArgument, LimitExceeded, clipped

CLOSE = (b"connection", b"close")  # a response header: uvicorn closes the connection after it
_DRAIN_FACTOR = 4
_DRAIN_MIN_BYTES = 16 << 20


class ClientDisconnected(Exception):
    """The connection closed before the whole body arrived (the client left, or the
    body timeout of ``connections.py`` closed it)."""


class BodyUnread(LimitExceeded):
    """A body over the limit that was not read to its end: its 413 must close the
    connection (``CLOSE``)."""


# A declared length past 18 digits (leading zeros stripped) is over any body limit, and
# int() refuses more than 4,300 digits (a ValueError: a 500), which llhttp lets through
# as leading zeros.
_MAX_DIGITS = 18
UNBOUNDED = 1 << 62  # what such a length reads as: over the limit, refused unread


def declared_length(value: bytes | None) -> int:
    """A ``content-length`` header's value as a number: -1 when absent or not a number,
    ``UNBOUNDED`` when longer than any body this server takes."""
    value = value.rstrip(b" \t") if value else value  # llhttp keeps trailing whitespace, frames by the number
    if not value or not value.isdigit():
        return -1
    digits = value.lstrip(b"0") or b"0"
    return int(digits) if len(digits) <= _MAX_DIGITS else UNBOUNDED


def encoding_refused(value: bytes | None) -> InvalidArgument | None:
    """The refusal of a body sent with a ``content-encoding`` (gzip...): none is decoded,
    and a compressed body read as JSON was "malformed JSON: invalid character (byte 0)",
    naming nothing the client could fix (review s53). ``value``: the header's codings
    (comma-separated; a header given twice, both). None: none but ``identity``."""
    if value is None:
        return None
    for coding in value.split(b","):
        if coding.strip().lower() not in (b"", b"identity"):
            name = clipped(coding.strip().decode("latin-1"))
            return InvalidArgument(f"content-encoding {name!r} is not supported: send the body uncompressed")
    return None


def too_large(limit: int, kind: type[LimitExceeded] = LimitExceeded) -> LimitExceeded:
    return kind(f"request body exceeds the limit of {limit} bytes", details=[{"limit_bytes": limit}])


async def read_body(
    receive: Receive, length: int, headers: Sequence[tuple[bytes, bytes]], limit: int
) -> bytes | None:
    """The whole body (``length``: as declared, -1 for none), or None once it is known to
    exceed ``limit`` and was read to its end; raises BodyUnread for a body over the limit
    left unread, ClientDisconnected when the connection closes first."""
    if length > limit:
        if length > _drain_bound(limit) or _expects_continue(headers):
            raise too_large(limit, BodyUnread)
        await _drain(receive, 0, limit)
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            if msg.get("more_body", False) and not await _drain(receive, size, limit):
                raise too_large(limit, BodyUnread)
            return None
        chunks.append(chunk)
        if not msg.get("more_body", False):
            if msg["type"] != "http.request":
                raise ClientDisconnected
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _drain(receive: Receive, seen: int, limit: int) -> bool:
    """Read and discard the rest of an oversized body, up to the bound; False when the
    bound stopped it before the end."""
    bound = _drain_bound(limit)
    while seen <= bound:
        msg = await receive()
        if msg["type"] != "http.request":
            return True  # the client left: nothing more to read
        seen += len(msg.get("body", b""))
        if not msg.get("more_body", False):
            return True
    return False


def _drain_bound(limit: int) -> int:
    return max(limit * _DRAIN_FACTOR, _DRAIN_MIN_BYTES)


def _expects_continue(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """``Expect: 100-continue`` (ASGI header names are lowercase; the value is not)."""
    return any(name == b"expect" and value.lower() == b"100-continue" for name, value in headers)
