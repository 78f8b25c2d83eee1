"""Requests asking to switch protocols (``Connection: upgrade`` with ``Upgrade: h2c`` or
``websocket``, and ``CONNECT``): answered as the HTTP/1.1 requests they also are, body
and all, and the connection read on as HTTP/1.1.

No route takes another protocol (uvicorn runs with ``ws="none"``), and a server may
ignore ``Upgrade`` (RFC 9110 §7.8; for h2c, "as though the Upgrade header field were
absent"). But httptools (llhttp) stops at the end of such a request's head: it ends the
message there with no body, raises ``HttpParserUpgrade`` with the offset of the head's
end, and parses whatever comes next as a new request. uvicorn logged a warning and went
on, so the body was lost (``curl --http2 -d ...`` on plain HTTP was answered "empty
body") and, arriving in a later segment, run as a request of its own: a request
smuggling and response-queue desync primitive behind any proxy that forwards
``Upgrade`` (review s56, finding 1).

:func:`read_on` takes the request back before its app has run (the head's end and the
message's end are parsed in one ``feed_data`` call, and the app's task only starts on the
next loop step): its cycle is told its body is still to come, and a fresh parser reads
the rest of the connection, first fed a head of the request's own framing headers
(``content-length``, ``transfer-encoding``, verbatim), so that llhttp frames the body as
it frames any other request's (chunks, a ``content-length`` with ``transfer-encoding``
refused, the body limit and timeout unchanged), then the requests after it.
:class:`_AfterUpgrade` sits between that parser and the protocol: the made-up head goes
to nobody, the body and every request after it to the protocol. That costs a method call
per parser callback on a connection that sent such a request (~0.1 µs a callback) and
nothing on any other: the protocol catches ``HttpParserUpgrade`` where it feeds the
parser, as uvicorn did. A ``CONNECT`` (in origin form: httptools refuses another) is
answered as well (405), then the connection is closed: no requests are read after it.
"""

from __future__ import annotations

from typing import Any

import httptools

from featurestore.api.client_mistakes import INVALID_REQUEST

_FRAMING = (b"content-length", b"transfer-encoding")


def read_on(proto: Any, data: bytes, at: int) -> None:
    """``proto``'s parser raised ``HttpParserUpgrade`` at offset ``at`` of ``data``: read
    on as HTTP/1.1 (the connection guard's ``data_received``, for such a request and any
    after it in ``data``)."""
    while True:
        data = resume(proto, data, at)
        proto.body_follows()  # (the parser ended the message at its head)
        try:
            proto.parser.feed_data(data)
            return
        except httptools.HttpParserError:
            proto.send_400_response(INVALID_REQUEST)
            return
        except httptools.HttpParserUpgrade as upgrade:
            at = upgrade.args[0]


def resume(proto: Any, data: bytes, at: int) -> bytes:
    """After ``HttpParserUpgrade`` at offset ``at`` of ``data``: reopen the body of
    ``proto``'s current request (its ``cycle``), give ``proto`` a parser that reads on,
    and return the bytes to feed it (the made-up head, then ``data[at:]``)."""
    cycle = proto.cycle
    cycle.more_body = True  # its app has not run yet: it waits for the body as for any other
    if proto.scope["method"] == "CONNECT":  # no tunnel is opened: what was sent for one is never read
        cycle.keep_alive = False
    cycle.message_event.clear()
    head = [b"POST / HTTP/1.1\r\n"]
    head += [b"%s: %s\r\n" % (name, value) for name, value in proto.headers if name in _FRAMING]
    head.append(b"\r\n")
    parser = httptools.HttpRequestParser(_AfterUpgrade(proto))
    parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn's parser
    proto.parser = parser
    return b"".join(head) + data[at:]


class _AfterUpgrade:
    """The delegate of the parser that reads on after a request that asked to upgrade:
    the made-up head framing that request's body goes to nobody; its body, its end and
    every request after it go to the protocol."""

    __slots__ = ("framing", "proto")

    def __init__(self, proto: Any) -> None:
        self.proto = proto
        self.framing = True  # reading the made-up head and the upgrade request's body

    def on_message_begin(self) -> None:
        if not self.framing:
            self.proto.on_message_begin()

    def on_url(self, url: bytes) -> None:
        if not self.framing:
            self.proto.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.framing:
            self.proto.on_header(name, value)

    def on_headers_complete(self) -> None:
        if not self.framing:
            self.proto.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.proto.on_body(body)

    def on_message_complete(self) -> None:
        self.framing = False
        self.proto.on_message_complete()
