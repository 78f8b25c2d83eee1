"""What a shed join's caller is told, and how it is counted: the refusal itself, the
same whichever rule of the load shedder refused it (overload.py; row_cap.py)."""

from __future__ import annotations

from typing import Final

from featurestore import metrics
from featurestore.errors import FeatureStoreError, LimitExceeded, Overloaded

# A shed join's outcome in featurestore_requests_total, the same over both protocols
# (whose status codes differ): refused for capacity, not failed, so the server-error
# alert (FeatureStoreJoinErrors) does not count it; FeatureStoreShedding does.
SHED: Final = "shed"

# What Retry-After says: long enough for the requests in flight to drain (they end by
# their deadline, 0.5 s by default), short enough to come back while a burst is absorbed.
RETRY_AFTER_SECONDS: Final = 1


def shed(api: str, reason: str) -> FeatureStoreError:
    """Count a shed request and return what its caller is told: UNAVAILABLE (HTTP 503)
    over HTTP, RESOURCE_EXHAUSTED over gRPC (gRPC's status for "out of capacity, back
    off"; its UNAVAILABLE would make clients retry at once). Its outcome in
    ``featurestore_requests_total`` is ``SHED`` on both."""
    metrics.requests_shed(api, reason).inc()
    kind = LimitExceeded if api == "grpc" else Overloaded
    return kind(
        f"the server is overloaded and shed this request ({reason}); retry after "
        f"{RETRY_AFTER_SECONDS} s or on another replica",
        details=[{"reason": reason, "retry_after_seconds": RETRY_AFTER_SECONDS}],
    )
