"""What a join sends: the HTTP body and the gRPC message built from Python values, and
what neither transport can carry, refused before anything is sent with the same error on
both. No I/O here; the answers are ``wire.py``'s."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NoReturn

from featurestore.client.errors import ArgumentTypeError, FeatureServiceError, error_for

Columns = Mapping[str, Sequence[Any]]
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def as_list(values: Any, column: str = "a column") -> list[Any]:
    """A column as a list of Python values (numpy arrays and pandas Series too, through
    ``tolist``; a list of numpy scalars through each one's ``item``; pandas' missing
    values, ``pd.NA`` and ``pd.NaT``, as None). ``column`` names it in an error: a str or
    bytes is refused, not split into its characters."""
    tolist = getattr(values, "tolist", None)
    seq = tolist() if callable(tolist) else values
    if isinstance(seq, str | bytes | bytearray):
        raise ArgumentTypeError(
            f"{column}: a column is a list of values, one per row, not the {type(seq).__name__} "
            f"{_shown(seq)} (a string is a sequence of its characters; one row is [{_shown(seq)}])"
        )
    try:
        out = list(seq)
    except TypeError:
        raise ArgumentTypeError(
            f"{column}: a column is a list of values, one per row, not {type(seq).__name__} {_shown(seq)}"
        ) from None
    if _PLAIN.issuperset(map(type, out)):  # (the usual list: one pass in C)
        return out
    # (an object array's tolist keeps its numpy scalars: np.array([np.int64(1), None]))
    for i, v in enumerate(out):
        # a numpy number or bool (np.int64 is no int: json and the gRPC checks refused it);
        # not an array (a vector: refused as such) nor a datetime64 (no unit to send it in)
        dtype = getattr(v, "dtype", None)
        if getattr(v, "ndim", None) == 0 and getattr(dtype, "kind", None) in _NUMERIC_KINDS:
            out[i] = v.item()
        elif type(v).__name__ in _PANDAS_MISSING and type(v).__module__.startswith("pandas."):
            out[i] = None  # a nullable column's (Int64, Float64, string) missing value
    return out


_PLAIN = frozenset({int, float, str, bool, type(None)})
_NUMERIC_KINDS = frozenset("biuf")  # numpy's bool, int, uint, float
_PANDAS_MISSING = frozenset({"NAType", "NaTType"})  # pd.NA, pd.NaT (pandas is not imported)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    """A value for an error message, short (an int of any size: ``_digits``)."""
    return _digits(value) if type(value) is int else repr(value)[:40]


def _digits(n: int) -> str:
    """An integer for a message (it may have thousands of digits)."""
    try:
        text = str(n)
    except ValueError:  # more digits than str writes (sys.get_int_max_str_digits)
        return f"an integer of {n.bit_length()} bits"
    return text if len(text) <= 24 else f"{text[:22]}... ({len(text)} digits)"


def check_target(features: Iterable[str] | None, feature_service: str | None) -> list[str] | None:
    """``features`` as the list of names to send, taken from any iterable once (a
    generator, a tuple, a numpy array, a pandas Index such as ``df.columns``), each a
    ``str``; refused as ``ArgumentTypeError`` naming it otherwise. Then exactly one of
    them, or ``feature_service``, names what to join."""
    names = _feature_names(features)
    if bool(names) == bool(feature_service):
        raise ValueError("name either features or feature_service")
    if feature_service and not isinstance(feature_service, str):
        raise ArgumentTypeError(f"feature_service: {_shown(feature_service)} is not a name")
    return names


def _feature_names(features: Iterable[str] | None) -> list[str] | None:
    if features is None:
        return None
    tolist = getattr(features, "tolist", None)  # numpy arrays and pandas' Index: plain values
    seq = tolist() if callable(tolist) else features
    if isinstance(seq, str | bytes | bytearray):  # a str is an iterable of str: its characters
        raise ArgumentTypeError(f"features is a list of 'view:feature' names, got the string {seq!r}")
    try:
        names = list(seq)
    except TypeError:
        raise ArgumentTypeError(
            f"features is a list of 'view:feature' names, got {type(features).__name__} {_shown(features)}"
        ) from None
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise ArgumentTypeError(
                f"features[{i}]: {_shown(name)} ({type(name).__name__}) is not a 'view:feature' name"
            )
    return [str(name) for name in names]  # (a str subclass, numpy.str_, as the plain str)


def check_columns(entities: Columns, request_data: Columns | None) -> None:
    """Column names are strings (json would send ``1`` as ``"1"``, gRPC cannot send it)."""
    for what, columns in (("entities", entities), ("request_data", request_data or {})):
        for name in columns:
            if not isinstance(name, str):
                raise ArgumentTypeError(
                    f"{what}: a column name is a string, got {_shown(name)} ({type(name).__name__})"
                )


_NUMBERS = frozenset({int, float})
_ONE_KIND = (frozenset({bool}), _NUMBERS, frozenset({str}))


def check_request_data(request_data: Columns | None) -> dict[str, list[Any]] | None:
    """What neither transport can carry, refused alike on both before anything is sent:
    a field mixing numbers, booleans and strings (gRPC's columns are typed), a number
    that is not finite (JSON has no NaN; the server refuses one over gRPC), and an
    integer beyond float64's range (no field's type holds one; gRPC has no column for it,
    and json.dumps refuses one of over 4300 digits). By the set of the values' types (8.3
    against 43.4 µs for 100 rows of 2 fields with a check per value, timeit); a field of
    other types takes the check per value, which names the row. Returns the columns as
    the lists it checked (a generator's values are read once, here)."""
    if request_data is None:
        return None
    checked: dict[str, list[Any]] = {}
    for name, raw in request_data.items():
        values = checked[name] = as_list(raw, f"request_data.{name}")
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
    return checked


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


def _entity_problem(name: str, values: list[Any]) -> str | None:
    """Why a column of keys cannot be sent: keys of two kinds, or an integer outside
    int64 (the server's answer over HTTP, the client's over gRPC: the same either way)."""
    if all(_is_int(v) for v in values):
        if values and (min(values) < _INT64_MIN or max(values) > _INT64_MAX):
            i = next(i for i, v in enumerate(values) if not _INT64_MIN <= v <= _INT64_MAX)
            return f"entity {name!r}: row {i} key {_digits(values[i])} is outside the int64 range"
        return None
    if all(isinstance(v, str) for v in values):
        return None
    ints = _is_int(values[0])
    i = next(i for i, v in enumerate(values) if not (_is_int(v) if ints else isinstance(v, str)))
    return (
        f"entity {name!r}: keys must be all integers or all strings; row {i} is "
        f"{type(values[i]).__name__} ({_shown(values[i])})"
    )


def _refuse_unsendable(
    entities: Columns,
    features: Sequence[str] | None,
    feature_service: str | None,
    request_data: Columns | None,
    cause: Exception,
) -> NoReturn:
    """The encoder refused the request (json's or protobuf's ``TypeError``/``ValueError``):
    raise ``InvalidArgumentError`` naming the field. Looked for only once one was raised,
    so a join that encodes pays nothing for it."""
    check_columns(entities, request_data)
    texts: list[tuple[str, Any]] = [(f"features[{i}]:", f) for i, f in enumerate(features or ())]
    texts.append(("feature_service:", feature_service or ""))
    for name, raw in entities.items():
        values = as_list(raw, f"entity {name!r}")
        if problem := _entity_problem(name, values):
            raise error_for("INVALID_ARGUMENT", problem)
        texts.append(("entity name", name))
        texts += [(f"entity {name!r}: row {i} key", v) for i, v in enumerate(values) if isinstance(v, str)]
    for name, raw in (request_data or {}).items():
        values = as_list(raw, f"request_data.{name}")
        texts.append(("request_data name", name))
        texts += [(f"request_data.{name}[{i}]:", v) for i, v in enumerate(values) if isinstance(v, str)]
    for where, text in texts:
        if not isinstance(text, str):
            raise ArgumentTypeError(f"{where} {_shown(text)} ({type(text).__name__}) is not a string")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise error_for(
                "INVALID_ARGUMENT",
                f"{where} {_shown(text)} is not UTF-8 text: a lone surrogate at position {e.start} "
                "(from bytes decoded with errors='surrogateescape'?)",
            ) from None
    raise error_for(
        "INVALID_ARGUMENT", f"the join request cannot be encoded: {type(cause).__name__}: {cause}"
    )


# --- HTTP (JSON) -------------------------------------------------------------------


def http_body(
    entities: Columns,
    features: Sequence[str] | None,
    feature_service: str | None,
    request_data: Columns | None,
    full_feature_names: bool,
) -> bytes:
    doc: dict[str, Any] = {"entities": {k: as_list(v, f"entity {k!r}") for k, v in entities.items()}}
    if features:
        doc["features"] = list(features)
    else:
        doc["feature_service"] = feature_service
    if request_data:
        doc["request_data"] = {k: as_list(v, f"request_data.{k}") for k, v in request_data.items()}
    if full_feature_names:
        doc["full_feature_names"] = True
    try:  # UTF-8 as it stands: a lone surrogate fails here, as protobuf fails it over gRPC
        return json.dumps(doc, allow_nan=False, ensure_ascii=False).encode()
    except (TypeError, ValueError) as e:  # a NaN or 5000-digit key, bytes, a surrogate
        _refuse_unsendable(entities, features, feature_service, request_data, e)


# --- gRPC (protobuf) ---------------------------------------------------------------


def grpc_request(
    entities: Columns,
    features: Sequence[str] | None,
    feature_service: str | None,
    request_data: Columns | None,
    full_feature_names: bool,
) -> Any:
    from featurestore.v1 import featurestore_pb2 as pb

    try:
        req = pb.JoinRequest(
            features=list(features or ()),
            feature_service=feature_service or "",
            full_feature_names=full_feature_names,
        )
        for name, raw in entities.items():
            values = as_list(raw, f"entity {name!r}")
            if problem := _entity_problem(name, values):  # as the server answers it over HTTP
                raise error_for("INVALID_ARGUMENT", problem)
            col = req.entities.add(name=name)
            keys = col.string_values if values and isinstance(values[0], str) else col.int64_values
            keys.values.extend(values)
        for name, raw in (request_data or {}).items():
            _request_column(req.request_data.add(name=name), name, as_list(raw, f"request_data.{name}"))
    except FeatureServiceError:
        raise
    except (TypeError, ValueError) as e:  # protobuf's: a lone surrogate, a name that is no str
        _refuse_unsendable(entities, features, feature_service, request_data, e)
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
    else:  # (check_request_data refuses these first, naming the row)
        raise error_for(
            "INVALID_ARGUMENT",
            f"request_data.{name}: values must be all numbers, all booleans or all strings",
        )
    field.values.extend(zero if v is None else v for v in values)
