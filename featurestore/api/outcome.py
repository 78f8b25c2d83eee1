"""Outcome accounting for one API route on one protocol (HTTP or gRPC, join or push).

Every request ends in exactly one outcome: ``ok``, ``partial`` (a join some store
could not answer), ``shed`` (a join refused under overload, ``refusal.SHED``: 503 or
RESOURCE_EXHAUSTED, not a server error), an error code name (``NOT_FOUND``,
``INTERNAL``, ...) or ``CANCELLED`` (the caller went away, or shutdown gave up on it). Each is counted in
``featurestore_requests_total`` and timed in ``featurestore_request_duration_seconds``
under the same labels, so the histogram's count per outcome equals the counter's. A
failed request's span gets the error; its status is set to ERROR only for the
server's own faults (``SERVER_FAULTS``).

This sits on the hot path (a batch-1 join is ~100 µs of CPU): the ``ok`` children are
bound once here; other outcomes go through the memoised label lookup.
"""

from __future__ import annotations

import time

from opentelemetry.trace import Span

from featurestore import metrics, tracing
from featurestore.api.errors import SERVER_FAULTS
from featurestore.errors import FeatureStoreError

CANCELLED = "CANCELLED"


class Outcomes:
    """Records how requests to ``route`` over ``protocol`` ended; ``t0`` is the
    request's start by ``time.perf_counter()``."""

    __slots__ = ("_ok_count", "_ok_seconds", "protocol", "route")

    def __init__(self, route: str, protocol: str) -> None:
        self.route = route
        self.protocol = protocol
        self._ok_count = metrics.requests(route, protocol, "ok")
        self._ok_seconds = metrics.request_duration(route, protocol, "ok")

    def succeeded(self, t0: float, partial: bool = False) -> None:
        if partial:
            self._record("partial", t0)
        else:
            self._ok_count.inc()
            self._ok_seconds.observe(time.perf_counter() - t0)

    def failed(
        self,
        t0: float,
        error: FeatureStoreError,
        span: Span | None = None,
        cause: BaseException | None = None,
    ) -> None:
        """``error`` is what the caller is answered; ``cause`` the exception behind it
        when that is another one (an unexpected exception answered as INTERNAL)."""
        self._record(error.code.value, t0)
        self.span_error(error, span, cause)

    def cancelled(self, t0: float) -> None:
        self._record(CANCELLED, t0)

    def record(self, outcome: str, t0: float) -> None:
        """Any outcome by name (``ok``, ``partial``, an error code, ``CANCELLED``)."""
        if outcome == "ok":
            self.succeeded(t0)
        else:
            self._record(outcome, t0)

    @staticmethod
    def span_error(error: FeatureStoreError, span: Span | None, cause: BaseException | None = None) -> None:
        if span is not None and span.is_recording():
            span.set_attribute("featurestore.error", error.code.value)
            tracing.record_error(span, cause or error, server_fault=error.code in SERVER_FAULTS)

    def _record(self, outcome: str, t0: float) -> None:
        metrics.requests(self.route, self.protocol, outcome).inc()
        metrics.request_duration(self.route, self.protocol, outcome).observe(time.perf_counter() - t0)
