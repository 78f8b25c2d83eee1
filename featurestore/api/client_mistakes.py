"""uvicorn's WARNING line about a client's bytes, kept out of the log.

The connection guard (connections.py) answers a request its parser cannot take 400 and
counts the close, ``featurestore_http_connections_closed_total{reason="malformed"}``,
after logging uvicorn's line for it as uvicorn did. A client can send those as fast as
it likes; a log line each is a cost and a flood for the operator, not news. (uvicorn's
own warnings about an upgrade request are never reached: the guard reads such a request
on as HTTP/1.1, upgrades.py.)"""

from __future__ import annotations

import logging

INVALID_REQUEST = "Invalid HTTP request received."  # (the connection guard logs it as uvicorn did)


class QuietClientMistakes(logging.Filter):
    """Drops uvicorn's WARNING line about a broken request (counted in
    ``featurestore_http_connections_closed_total{reason="malformed"}`` and answered 400).
    Kept with ``log_level: debug``."""

    MESSAGES = frozenset({INVALID_REQUEST})

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or record.msg not in self.MESSAGES:
            return True
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def install() -> None:
    """Filter uvicorn's error logger (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, QuietClientMistakes) for f in logger.filters):
        logger.addFilter(QuietClientMistakes())
