"""The ``authorization`` a request carries, read one way on every route and both
transports: a request that carries it more than once is refused, 400 ``INVALID_ARGUMENT``
(gRPC ``INVALID_ARGUMENT``) saying so, with ``WWW-Authenticate: Bearer ...,
error="invalid_request"`` (RFC 6750 §3.1: a request that "repeats the same parameter"),
and counted as a refused token (``featurestore_auth_failures_total{reason="invalid"}``).

``Authorization`` is a singleton field (RFC 9110 §11.6.2). Until review s56 (finding 4)
the HTTP join took the last value and every other route, and gRPC, the first: which of
two tokens authorized a request depended on its route, so a proxy that adds its own
``Authorization`` before or after a client's got different principals on different
routes. Refusing both is the one reading that cannot pick the wrong one.

Only where a token is checked (tokens configured, the route's scope asked for): otherwise
no route reads the header. An accepted request pays nothing for this: its value is
compared with ``TWICE`` (by identity) only once the token check has refused it.
"""

from __future__ import annotations

from collections.abc import Iterable

from featurestore.auth import REALM, www_authenticate
from featurestore.errors import FeatureStoreError, InvalidArgument

# What a request carrying ``authorization`` more than once reads as: never a token the
# check accepts, and told from a real value by identity (``is``), never by equality.
TWICE = b"<authorization given more than once>"
TWICE_TEXT = TWICE.decode()  # gRPC metadata values are str
_HEADER = b"authorization"


def http_value(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The one ``authorization`` value of ASGI ``headers`` (lowercase names), None when
    there is none, ``TWICE`` when there are more."""
    value = None
    for name, v in headers:
        if name == _HEADER:
            if value is not None:
                return TWICE
            value = bytes(v)
    return value


def grpc_value(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """``http_value`` of a gRPC call's invocation metadata (``TWICE_TEXT`` when twice)."""
    value = None
    for key, v in metadata or ():
        if key == "authorization":
            if value is not None:
                return TWICE_TEXT
            value = str(v)
    return value


def refusal(error: FeatureStoreError, value: object, scope: str) -> FeatureStoreError:
    """The refusal of a request whose ``value`` (``http_value``, ``grpc_value``,
    ``JoinHeaders.authorization``) the token check refused with ``error``: that error, or
    for a header given more than once, the 400 saying so."""
    if value is not TWICE and value is not TWICE_TEXT:
        return error
    return InvalidArgument(
        "the request carries more than one authorization header: send one bearer token",
        details=[{"scope": scope, "reason": "invalid", "duplicate_header": "authorization"}],
    )


def challenge(error: FeatureStoreError) -> str:
    """The ``WWW-Authenticate`` value of a refusal by ``refusal`` or the token check."""
    if isinstance(error, InvalidArgument):
        return f'{REALM}, error="invalid_request"'
    return www_authenticate(error)
