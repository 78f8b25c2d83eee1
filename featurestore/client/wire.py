"""The join on the wire: request bodies and messages built from Python values, answers
turned into ``JoinResult`` or the API error they carry. Shared by the sync and async
clients; no I/O here."""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from featurestore.client.errors import CODE_OF_HTTP_STATUS, FeatureServiceError, error_for
from featurestore.client.result import Column, JoinResult, Status

Columns = Mapping[str, Sequence[Any]]
_STATUS = {s.value: s for s in Status}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# The instants a datetime holds, in epoch µs: years 1-9999.
_YEAR_1 = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
_YEAR_10000 = 253_402_300_800_000_000  # 10000-01-01T00:00:00Z


def as_list(values: Any) -> list[Any]:
    """A column as a list of Python values (numpy arrays and pandas Series too, through
    ``tolist``; a list of numpy scalars through each one's ``item``)."""
    tolist = getattr(values, "tolist", None)
    out = list(tolist() if callable(tolist) else values)
    if _PLAIN.issuperset(map(type, out)):  # (the usual list: one pass in C)
        return out
    # (an object array's tolist keeps its numpy scalars: np.array([np.int64(1), None]))
    for i, v in enumerate(out):
        # a numpy number or bool (np.int64 is no int: json and the gRPC checks refused it);
        # not an array (a vector: refused as such) nor a datetime64 (no unit to send it in)
        dtype = getattr(v, "dtype", None)
        if getattr(v, "ndim", None) == 0 and getattr(dtype, "kind", None) in _NUMERIC_KINDS:
            out[i] = v.item()
    return out


_PLAIN = frozenset({int, float, str, bool, type(None)})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    """A value for an error message, short (an int of any size: ``_digits``)."""
    return _digits(value) if type(value) is int else repr(value)[:40]


_NUMERIC_KINDS = frozenset("biuf")  # numpy's bool, int, uint, float


def check_target(features: Sequence[str] | None, feature_service: str | None) -> None:
    if isinstance(features, str):  # a str is a Sequence[str]: its characters
        raise TypeError(f"features is a list of 'view:feature' names, got the string {features!r}")
    if bool(features) == bool(feature_service):
        raise ValueError("name either features or feature_service")


_NUMBERS = frozenset({int, float})
_ONE_KIND = (frozenset({bool}), _NUMBERS, frozenset({str}))


def check_request_data(request_data: Columns | None) -> None:
    """What neither transport can carry, refused alike on both before anything is sent:
    a field mixing numbers, booleans and strings (gRPC's columns are typed), a number
    that is not finite (JSON has no NaN; the server refuses one over gRPC), and an
    integer beyond float64's range (no field's type holds one; gRPC has no column for it,
    and json.dumps refuses one of over 4300 digits). By the set of the values' types (8.3
    against 43.4 µs for 100 rows of 2 fields with a check per value, timeit); a field of
    other types takes the check per value, which names the row."""
    for name, raw in (request_data or {}).items():
        values = as_list(raw)
        types = set(map(type, values))
        types.discard(type(None))
        if any(types <= kind for kind in _ONE_KIND):
            if float in types and not all(map(math.isfinite, (v for v in values if type(v) is float))):
                i = next(i for i, v in enumerate(values) if type(v) is float and not math.isfinite(v))
                raise error_for(
                    "INVALID_ARGUMENT",
                    f"request_data.{name}[{i}]: {values[i]} is not a finite number (None is a null)",
                )
            if int in types and not _within_float64([v for v in values if type(v) is int]):
                i = next(i for i, v in enumerate(values) if type(v) is int and not _within_float64([v]))
                raise _beyond_float64(name, i, values[i])
            continue
        _check_each(name, values)


_FLOAT_MAX = sys.float_info.max


def _within_float64(ints: list[int]) -> bool:
    return min(ints) >= -_FLOAT_MAX and max(ints) <= _FLOAT_MAX


def _beyond_float64(name: str, row: int, value: int) -> FeatureServiceError:
    return error_for(
        "INVALID_ARGUMENT", f"request_data.{name}[{row}]: {_digits(value)} is outside the float64 range"
    )


def _check_each(name: str, values: list[Any]) -> None:
    kinds: set[str] = set()
    for i, v in enumerate(values):
        if v is None:
            continue
        if isinstance(v, bool):
            kinds.add("bool")
        elif isinstance(v, int | float):
            kinds.add("number")
            if isinstance(v, float) and not math.isfinite(v):
                raise error_for(
                    "INVALID_ARGUMENT",
                    f"request_data.{name}[{i}]: {v} is not a finite number (None is a null)",
                )
            if isinstance(v, int) and not _within_float64([v]):
                raise _beyond_float64(name, i, v)
        elif isinstance(v, str):
            kinds.add("string")
        else:
            kinds.add(type(v).__name__)
        if len(kinds) > 1 or not kinds <= {"bool", "number", "string"}:
            raise error_for(
                "INVALID_ARGUMENT",
                f"request_data.{name}[{i}]: {v!r} ({type(v).__name__}): a field's values must be all numbers, "
                "all booleans or all strings (None is a null)",
            )


# --- HTTP (JSON) -------------------------------------------------------------------


def http_body(
    entities: Columns,
    features: Sequence[str] | None,
    feature_service: str | None,
    request_data: Columns | None,
    full_feature_names: bool,
) -> bytes:
    doc: dict[str, Any] = {"entities": {k: as_list(v) for k, v in entities.items()}}
    if features:
        doc["features"] = list(features)
    else:
        doc["feature_service"] = feature_service
    if request_data:
        doc["request_data"] = {k: as_list(v) for k, v in request_data.items()}
    if full_feature_names:
        doc["full_feature_names"] = True
    return json.dumps(doc, allow_nan=False).encode()


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
    columns = [
        Column(
            name,
            col["values"],
            [_STATUS[s] for s in col["statuses"]],
            [None if t is None else _event_time_iso(t) for t in col["event_timestamps"]],
        )
        for name, col in zip(meta["feature_names"], doc["results"], strict=True)
    ]
    return JoinResult(
        list(meta["feature_names"]), columns, int(meta["registry_version"]), meta["trace_id"], meta["partial"]
    )


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
    if text.isdigit():
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


def grpc_request(
    entities: Columns,
    features: Sequence[str] | None,
    feature_service: str | None,
    request_data: Columns | None,
    full_feature_names: bool,
) -> Any:
    from featurestore.v1 import featurestore_pb2 as pb

    req = pb.JoinRequest(
        features=list(features or ()),
        feature_service=feature_service or "",
        full_feature_names=full_feature_names,
    )
    for name, raw in entities.items():
        values = as_list(raw)
        col = req.entities.add(name=name)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            if values and (min(values) < _INT64_MIN or max(values) > _INT64_MAX):
                i = next(i for i, v in enumerate(values) if not _INT64_MIN <= v <= _INT64_MAX)
                raise error_for(
                    "INVALID_ARGUMENT",
                    f"entity {name!r}: row {i} key {_digits(values[i])} is outside the int64 range",
                )
            col.int64_values.values.extend(values)
        elif all(isinstance(v, str) for v in values):
            col.string_values.values.extend(values)
        else:
            # as the server answers it over HTTP: the same error on either transport
            ints = _is_int(values[0])
            i = next(i for i, v in enumerate(values) if not (_is_int(v) if ints else isinstance(v, str)))
            raise error_for(
                "INVALID_ARGUMENT",
                f"entity {name!r}: keys must be all integers or all strings; row {i} is "
                f"{type(values[i]).__name__} ({_shown(values[i])})",
            )
    for name, raw in (request_data or {}).items():
        _request_column(req.request_data.add(name=name), name, as_list(raw))
    return req


def _request_column(col: Any, name: str, values: list[Any]) -> None:
    present = [v for v in values if v is not None]
    zero: Any
    col.null_rows.extend(i for i, v in enumerate(values) if v is None)
    integers = all(isinstance(v, int) and not isinstance(v, bool) for v in present)
    if present and all(isinstance(v, bool) for v in present):
        field, zero = col.bool_values, False
    elif integers and (not present or (min(present) >= _INT64_MIN and max(present) <= _INT64_MAX)):
        field, zero = col.int64_values, 0
    elif integers or all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        # integers beyond int64 go as doubles: the server takes int64_values as float64 for
        # a float64 field anyway, and refuses either for an int64 one (as over HTTP)
        field, zero = col.double_values, 0.0
    elif all(isinstance(v, str) for v in present):
        field, zero = col.string_values, ""
    else:
        raise ValueError(f"request_data {name!r}: values must be all numbers, all booleans or all strings")
    field.values.extend(zero if v is None else v for v in values)


def _digits(n: int) -> str:
    """An integer for a message (it may have thousands of digits)."""
    try:
        text = str(n)
    except ValueError:  # more digits than str writes (sys.get_int_max_str_digits)
        return f"an integer of {n.bit_length()} bits"
    return text if len(text) <= 24 else f"{text[:22]}... ({len(text)} digits)"


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
                name, _grpc_values(col, statuses), statuses, [_event_time(t) for t in col.event_timestamps]
            )
        )
    meta = resp.metadata
    return JoinResult(list(meta.feature_names), columns, meta.registry_version, meta.trace_id, meta.partial)


def _event_time(us: int) -> datetime | None:
    """An event timestamp of the gRPC API (epoch µs, 0 = none); None for an instant
    outside years 1-9999, which a datetime cannot hold (docs/client.md)."""
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
