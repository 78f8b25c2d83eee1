"""Answers as ASGI messages: an answer tuple (``join_cycle.Answer``: status, content type,
body, more headers) sent, an error's answer, and a request header read from the scope."""

from __future__ import annotations

from starlette.types import Scope, Send

from featurestore.api import json_codec
from featurestore.api.errors import http_status
from featurestore.api.join_cycle import Answer
from featurestore.errors import FeatureStoreError

JSON = b"application/json"


async def send_error(send: Send, error: FeatureStoreError, *headers: tuple[bytes, bytes]) -> None:
    """A whole error response: its status, the JSON error body, and ``headers``."""
    await send_answer(send, error_answer(error, *headers))


async def send_answer(send: Send, answer: Answer) -> None:
    """An answer (status, content type, body, more headers) as ASGI's two messages."""
    status, ctype, out, extra = answer
    head = [(b"content-type", ctype), (b"content-length", str(len(out)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": out})


def error_answer(error: FeatureStoreError, *headers: tuple[bytes, bytes]) -> Answer:
    """The answer of ``error``: its status and its JSON error body, with ``headers``."""
    return http_status(error), JSON, json_codec.encode_error(error.to_dict()), headers


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of request header ``name`` (lower case), if any."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None
