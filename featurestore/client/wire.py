"""The join's answers on the wire: turned into ``JoinResult`` (each column with the dtype
the answer tells) or the API error they carry. Shared by the sync and async clients; no
I/O here (what a join sends: ``request.py``)."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from featurestore.client.errors import CODE_OF_HTTP_STATUS, FeatureServiceError, error_for
from featurestore.client.result import Column, JoinResult, Status

_STATUS = {s.value: s for s in Status}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The instants a datetime holds, in epoch µs: years 1-9999.
_YEAR_1 = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
_YEAR_10000 = 253_402_300_800_000_000  # 10000-01-01T00:00:00Z


# --- HTTP (JSON) -------------------------------------------------------------------


def http_result(body: bytes) -> JoinResult:
    """The join result in a 200's body; a body that is not one (a proxy's page, a server
    of another version) is a ``FeatureServiceError`` with code UNKNOWN, not a KeyError."""
    try:
        return _http_result(json.loads(body))
    except (ValueError, KeyError, TypeError) as e:
        text = body[:200].decode("utf-8", "replace").strip()
        error = error_for("UNKNOWN", f"HTTP 200 without a join result ({type(e).__name__}: {e}): {text}")
        error.http_status = 200
        raise error from e


def _http_result(doc: Any) -> JoinResult:
    meta = doc["metadata"]
    names = meta["feature_names"]
    dtypes = meta.get("dtypes")  # (a server before metadata.dtypes: the types the values show)
    if dtypes is None or len(dtypes) != len(names):
        dtypes = [_shown_dtype(col["values"]) for col in doc["results"]]
    columns = [
        Column(
            name,
            col["values"],
            [_STATUS[s] for s in col["statuses"]],
            [None if t is None else _event_time_iso(t) for t in col["event_timestamps"]],
            dtype,
        )
        for name, col, dtype in zip(names, doc["results"], dtypes, strict=True)
    ]
    return JoinResult(
        list(meta["feature_names"]), columns, int(meta["registry_version"]), meta["trace_id"], meta["partial"]
    )


def _shown_dtype(values: list[Any]) -> str | None:
    """The dtype an HTTP answer's values show, for a server whose answers carry no
    ``metadata.dtypes``: a timestamp shows as a string (ISO 8601, the value the client
    gives over gRPC too), and a column without a value that is not null shows none."""
    types = set(map(type, values))
    types.discard(type(None))
    return _DTYPE_OF_TYPES.get(frozenset(types))


_DTYPE_OF_TYPES = {
    frozenset({int}): "int64",
    frozenset({float}): "float64",
    frozenset({int, float}): "float64",
    frozenset({str}): "string",
    frozenset({bool}): "bool",
    frozenset({list}): "float32_vector",
}


def http_error(status: int, body: bytes, retry_after: str | None = None) -> FeatureServiceError:
    """The API's ``{"error": {code, message, details}}``, or a code from the status for a
    body that is not one (a proxy's error page). ``retry_after``: the answer's
    Retry-After header (a shed join's; the body's ``retry_after_seconds`` when the header
    is missing)."""
    wait = parse_retry_after(retry_after)
    try:
        err = json.loads(body)["error"]
        if not isinstance(err, dict):  # a proxy's {"error": "Bad Gateway"}: by its status, below
            raise TypeError(err)
        details = list(err.get("details") or [])
        if wait is None:
            wait = _detailed_retry_after(details)
        return error_for(str(err["code"]), str(err["message"]), details, status, wait)
    except (ValueError, KeyError, TypeError):
        code = CODE_OF_HTTP_STATUS.get(status, "UNAVAILABLE" if status >= 500 else "INVALID_ARGUMENT")
        text = body[:200].decode("utf-8", "replace").strip()
        return error_for(code, f"HTTP {status}" + (f": {text}" if text else ""), None, status, wait)


def parse_retry_after(value: str | bytes | None) -> float | None:
    """Seconds from a Retry-After value: delta-seconds or an HTTP date (RFC 9110 10.2.3);
    None for none or one that is neither."""
    if value is None:
        return None
    text = (value.decode("latin-1") if isinstance(value, bytes) else value).strip()
    if text.isascii() and text.isdigit():  # (isdigit alone takes "²", which float refuses)
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _detailed_retry_after(details: list[Any]) -> float | None:
    """A shed join's ``{"reason": ..., "retry_after_seconds": n}`` detail."""
    for d in details:
        n = d.get("retry_after_seconds") if isinstance(d, dict) else None
        if isinstance(n, int | float) and not isinstance(n, bool) and math.isfinite(n) and n >= 0:
            return float(n)
    return None


# An RFC 3339 instant as the server writes one of a year outside 1-9999 (0000, -001, 10000)
_OTHER_YEAR = re.compile(r"-?\d{3,}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z")


def _event_time_iso(text: str) -> datetime | None:
    """An event timestamp of the HTTP API; None for an instant outside years 1-9999,
    which a datetime cannot hold (as over gRPC, ``_event_time``)."""
    if text[4:5] == "-" and text[:4] >= "0001":  # years 0001-9999 ("-001" sorts before)
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    if _OTHER_YEAR.fullmatch(text) is None:
        raise ValueError(f"not an RFC 3339 UTC timestamp: {text[:40]!r}")
    return None


# --- gRPC (protobuf) ---------------------------------------------------------------


def grpc_result(resp: Any) -> JoinResult:
    """The JoinResult of a JoinResponse; one that is not a join result (a server of
    another version) is a ``FeatureServiceError`` with code UNKNOWN, as over HTTP."""
    try:
        return _grpc_result(resp)
    except (ValueError, KeyError, TypeError, OverflowError) as e:
        raise error_for("UNKNOWN", f"gRPC answer without a join result ({type(e).__name__}: {e})") from e


def _grpc_result(resp: Any) -> JoinResult:
    from featurestore.v1 import featurestore_pb2 as pb

    name_of = {int(v): pb.Status.Name(v) for v in pb.Status.values()}
    columns = []
    for name, col in zip(resp.metadata.feature_names, resp.results, strict=True):
        statuses = [_STATUS[name_of[s]] for s in col.statuses]
        columns.append(
            Column(
                name,
                _grpc_values(col, statuses),
                statuses,
                [_event_time(t) for t in col.event_timestamps],
                _DTYPE_OF_KIND.get(col.WhichOneof("values")),
            )
        )
    meta = resp.metadata
    return JoinResult(list(meta.feature_names), columns, meta.registry_version, meta.trace_id, meta.partial)


# The gRPC answer's columns are typed by the feature's dtype (docs/api.md): its oneof field.
_DTYPE_OF_KIND = {
    "int64_values": "int64",
    "double_values": "float64",
    "string_values": "string",
    "bool_values": "bool",
    "timestamp_values": "timestamp",
    "vector_values": "float32_vector",
}


def _event_time(us: int) -> datetime | None:
    """An event timestamp of the gRPC API (epoch µs, 0 = none: so an event time of
    exactly 1970-01-01T00:00:00Z, a datetime over HTTP, is None here; docs/client.md);
    None for an instant outside years 1-9999, which a datetime cannot hold."""
    return _EPOCH + timedelta(microseconds=us) if us and _YEAR_1 <= us < _YEAR_10000 else None


def _grpc_values(col: Any, statuses: list[Status]) -> list[Any]:
    kind = col.WhichOneof("values")
    if kind is None:
        return [None] * len(statuses)
    if kind == "vector_values":
        raw: list[Any] = [list(v.values) for v in col.vector_values.values]
    elif kind == "timestamp_values":
        raw = [iso_utc(us) for us in col.timestamp_values.values]
    else:
        raw = list(getattr(col, kind).values)
    nulls = set(col.null_rows)
    return [
        v if s is Status.PRESENT and i not in nulls else None
        for i, (v, s) in enumerate(zip(raw, statuses, strict=True))
    ]


def iso_utc(us: int) -> str:
    """Epoch µs as the HTTP API renders a timestamp (featurestore/api/timestamps.py, which
    the client does not import): RFC 3339 UTC, ``.ffffff`` only when not a whole second,
    the year as numpy writes it: at least four digits, a sign before year 0 (``0999``,
    ``0000``, ``-001``, ``10000``). Any int64, by the proleptic Gregorian calendar."""
    seconds, fraction = divmod(us, 1_000_000)
    days, second = divmod(seconds, 86_400)
    # days -> civil date (H. Hinnant, "chrono-Compatible Low-Level Date Algorithms")
    era, day = divmod(days + 719_468, 146_097)
    year_of_era = (day - day // 1460 + day // 36_524 - day // 146_096) // 365
    day_of_year = day - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    mp = (5 * day_of_year + 2) // 153  # the month, counted from March
    month = mp + 3 if mp < 10 else mp - 9
    year = year_of_era + era * 400 + (month <= 2)
    hour, second = divmod(second, 3600)
    minute, second = divmod(second, 60)
    date = f"{year:04d}-{month:02d}-{day_of_year - (153 * mp + 2) // 5 + 1:02d}"
    text = f"{date}T{hour:02d}:{minute:02d}:{second:02d}"
    return f"{text}.{fraction:06d}Z" if fraction else f"{text}Z"


def grpc_error(e: Any) -> FeatureServiceError:
    """A failed call (``grpc.RpcError``) as this client's error type for its status, with
    the ``retry-after`` trailing metadata a shed join carries."""
    code = e.code().name if e.code() is not None else "UNKNOWN"
    wait = None
    trailing = getattr(e, "trailing_metadata", None)
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key == "retry-after":
            wait = parse_retry_after(value)
    return error_for(code, e.details() or code, retry_after=wait)
