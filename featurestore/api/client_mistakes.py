"""uvicorn's WARNING lines about a client's bytes, kept out of the log.

uvicorn logs one per request it cannot take: a broken request (the connection guard
answers it 400 and counts the close, ``featurestore_http_connections_closed_total
{reason="malformed"}``, connections.py) and a WebSocket upgrade, which this server does
not take. A client can send those as fast as it likes; a log line each is a cost and a
flood for the operator, not news."""

from __future__ import annotations

import logging

INVALID_REQUEST = "Invalid HTTP request received."  # (the connection guard logs it as uvicorn did)


class QuietClientMistakes(logging.Filter):
    """Drops uvicorn's WARNING lines about a client's bytes, one per request: a broken
    request (counted in ``featurestore_http_connections_closed_total{reason="malformed"}``
    and answered 400) and a WebSocket upgrade, which this server does not take (``ws="none"``:
    the request is answered as plain HTTP), with uvicorn's advice to install a WebSocket
    library. Kept with ``log_level: debug``."""

    MESSAGES = frozenset(
        {
            INVALID_REQUEST,
            "Unsupported upgrade request.",
            "No supported WebSocket library detected. Please use \"pip install 'uvicorn[standard]'\", "
            "or install 'websockets' or 'wsproto' manually.",
        }
    )

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or record.msg not in self.MESSAGES:
            return True
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def install() -> None:
    """Filter uvicorn's error logger (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, QuietClientMistakes) for f in logger.filters):
        logger.addFilter(QuietClientMistakes())
