"""featurestore.client against a real server with a feature of every dtype, over HTTP and
gRPC: Arrow and pandas columns of the features' types whatever a batch holds, the
arguments neither transport can carry refused alike on both (naming the field), pandas'
missing values as nulls, and the server's errors surviving a pickle (a process pool's)."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from typing import Any

import pandas as pd  # type: ignore[import-untyped]
import pyarrow as pa
import pytest

from featurestore.client import FeatureClient, FeatureServiceError, InvalidArgumentError, NotFoundError
from featurestore.client.wire import http_result
from tests.support import CLIENT_DEADLINE_S, ServerProcess, http_post

TRANSPORTS = ["http", "grpc"]
DEFINITIONS = """
project: client_types
entities:
  - {name: sku, dtype: string}
feature_views:
  - name: item
    entities: [sku]
    features:
      - {name: emb, dtype: float32_vector}
      - {name: active, dtype: bool}
      - {name: price, dtype: float64}
      - {name: seen_at, dtype: timestamp}
      - {name: title, dtype: string}
      - {name: qty, dtype: int64}
derived_views:
  - name: req
    inputs: [item:price]
    request_schema:
      - {name: city, dtype: string}
      - {name: n, dtype: int64}
      - {name: x, dtype: float64}
    features:
      - {name: is_paris, dtype: bool, expression: "city == 'Paris'"}
      - {name: n2, dtype: float64, expression: "n * 2"}
      - {name: x2, dtype: float64, expression: "coalesce(x, 7) * 2"}
"""
FEATURES = [f"item:{f}" for f in ("emb", "active", "price", "seen_at", "title", "qty")]
ROWS = {  # row "b": a stored null in every feature but qty, whose value is beyond 2**53
    "sku": ["a", "b", "ключ 日本"],
    "emb": [[0.5, -1.25], None, []],
    "active": [True, None, False],
    "price": [1.5, None, -0.0],
    "seen_at": ["2024-01-01T00:00:00Z", None, "0999-12-31T23:59:59.999999Z"],
    "title": ["t", None, "tête \U0001f600"],
    "qty": [None, 2**63 - 1, -(2**63)],
}
DECLARED = pa.schema(
    [
        ("sku", pa.string()),
        ("emb", pa.list_(pa.float32())),
        ("active", pa.bool_()),
        ("price", pa.float64()),
        ("seen_at", pa.string()),  # ISO strings, as the values are
        ("title", pa.string()),
        ("qty", pa.int64()),
    ]
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("client-types")
    (work / "features.yaml").write_text(DEFINITIONS)
    (work / "config.yaml").write_text(
        f"project: client_types\nregistry: {{path: {work / 'registry'}}}\nstores: {{default: {{kind: memory}}}}\n"
        f"derived: {{cache_dir: {work / 'kernels'}}}\nlimits: {{deadline_ms: 5000}}\n"
    )
    proc = ServerProcess(
        ["--config", str(work / "config.yaml"), "--definitions", str(work / "features.yaml")],
        log_path=work / "server.log",
    ).start(timeout=90)
    try:
        body = json.dumps({"feature_view": "item", "rows": ROWS}).encode()
        status, answer, _ = http_post(proc.url + "/v1/feature/push", body)
        assert status == 200, answer
        yield proc
    finally:
        proc.stop()


def client(server: ServerProcess, transport: str) -> FeatureClient:
    address = server.url if transport == "http" else f"grpc://{server.grpc_target}"
    return FeatureClient(address, deadline=CLIENT_DEADLINE_S)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_batch_with_values_is_an_arrow_table_of_the_declared_types(
    server: ServerProcess, transport: str
) -> None:
    with client(server, transport) as c:
        table = c.join({"sku": ["a", "b"]}, FEATURES).to_arrow()
    assert table.schema == DECLARED
    assert table.column("qty").to_pylist() == [None, 2**63 - 1]
    assert table.column("emb").to_pylist() == [[0.5, -1.25], None]


def test_a_non_ascii_key_and_its_values_come_back_alike_over_both_transports(server: ServerProcess) -> None:
    """The HTTP body goes as UTF-8 (not JSON's ``\\u`` escapes): the server reads either."""
    results = []
    for transport in TRANSPORTS:
        with client(server, transport) as c:
            results.append(c.join({"sku": ["ключ 日本"]}, FEATURES))
    http, grpc_ = results
    assert http.to_dict() == grpc_.to_dict() and http.statuses() == grpc_.statuses()
    assert http["title"].values == ["tête \U0001f600"] and http["qty"].values == [-(2**63)]
    assert http["emb"].values == [[]] and http.to_arrow().schema == DECLARED


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_batch_without_any_value_keeps_the_declared_types_over_either_transport(
    server: ServerProcess, transport: str
) -> None:
    """gRPC's columns are typed, HTTP's answer names them in ``metadata.dtypes``."""
    with client(server, transport) as c:
        found = c.join({"sku": ["a"]}, FEATURES).to_arrow()
        missing = c.join({"sku": ["nope", "none"]}, FEATURES)
    assert [col.dtype for col in missing] == [
        "string", "float32_vector", "bool", "float64", "timestamp", "string", "int64"
    ]  # fmt: skip
    assert missing.to_arrow().schema == DECLARED
    assert pa.concat_tables([found, missing.to_arrow()]).num_rows == 3  # (a null-typed column failed this)


def test_from_a_server_without_dtypes_in_its_json_a_column_of_nulls_casts_to_the_declared_type() -> None:
    """A server before ``metadata.dtypes``: the types the values show, none for a column
    of nulls, and Arrow's null type casts to any (docs/client.md)."""
    doc = {
        "metadata": {
            "feature_names": ["sku", "price"],
            "registry_version": 1,
            "trace_id": "t",
            "partial": False,
        },
        "results": [
            {"values": ["nope"], "statuses": ["PRESENT"], "event_timestamps": [None]},
            {"values": [None], "statuses": ["NOT_FOUND"], "event_timestamps": [None]},
        ],
    }
    result = http_result(json.dumps(doc).encode())
    assert [col.dtype for col in result] == ["string", None]
    schema = pa.schema([("sku", pa.string()), ("price", pa.float64())])
    assert result.to_arrow().cast(schema).schema == schema


def test_to_pandas_keeps_int64_exact_beside_a_null_and_is_the_same_on_both_transports(
    server: ServerProcess,
) -> None:
    frames = []
    for transport in TRANSPORTS:
        with client(server, transport) as c:
            frames.append(c.join({"sku": ["a", "b", "nope"]}, FEATURES).to_pandas())
    http, grpc_ = frames
    pd.testing.assert_frame_equal(http, grpc_)
    assert http["qty"].dtype == "Int64" and http["qty"][1] == 2**63 - 1  # not float64's 9.223372036854776e18
    assert http["qty"].isna().tolist() == [True, False, True]
    assert http["active"].dtype == "boolean" and http["title"].dtype == "string"
    assert http["price"].dtype == "float64" and http["emb"][0] == [0.5, -1.25]


@pytest.mark.parametrize(
    ("args", "kwargs", "named"),
    [
        (({"sku": ["\ud800"]}, ["item:price"]), {}, "entity 'sku': row 0 key '\\ud800' is not UTF-8 text"),
        (({"sku": ["a"]}, ["item:\udcff"]), {}, "features[0]: 'item:\\udcff' is not UTF-8 text"),
        (({"sku": ["a"]}, None), {"feature_service": "s\udcff"}, "feature_service: 's\\udcff' is not UTF-8"),
        (
            ({"sku": ["a"]}, ["req:is_paris"]),
            {"request_data": {"city": ["Paris", "\udcff"]}},
            "request_data.city[1]: '\\udcff' is not UTF-8 text",
        ),
        (({"sku": ["a"]}, [1]), {}, "features[0]: 1 (int) is not a 'view:feature' name"),
    ],
    ids=["entity key", "feature", "service", "request field", "feature not a str"],
)
def test_what_no_transport_can_carry_is_the_same_invalid_argument_naming_the_field_on_both(
    server: ServerProcess, args: tuple[Any, ...], kwargs: dict[str, Any], named: str
) -> None:
    """A lone surrogate (bytes decoded with surrogateescape) is no UTF-8: protobuf raised
    UnicodeEncodeError over gRPC, the server a 400 "malformed JSON" over HTTP."""
    for transport in TRANSPORTS:
        with client(server, transport) as c, pytest.raises(InvalidArgumentError) as refused:
            c.join(*args, **kwargs)
        assert refused.value.message.startswith(named), (transport, refused.value.message)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_string_given_as_an_entity_column_is_refused_not_joined_as_its_characters(
    server: ServerProcess, transport: str
) -> None:
    with client(server, transport) as c:
        for column in ("ab", b"ab"):
            with pytest.raises(InvalidArgumentError, match="entity 'sku': a column is a list of values") as e:
                c.join({"sku": column}, ["item:price"])
            assert isinstance(e.value, TypeError)  # (as features="view:f" was and is)
            with pytest.raises(
                InvalidArgumentError, match=r"request_data\.city: a column is a list of values"
            ):
                c.join({"sku": ["a"]}, ["req:is_paris"], request_data={"city": column})


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_pandas_missing_values_in_request_data_are_nulls_as_none_is(
    server: ServerProcess, transport: str
) -> None:
    features = ["req:is_paris", "req:n2", "req:x2"]
    nullable = {
        "city": pd.Series(["Paris", pd.NA], dtype="string"),
        "n": pd.Series([3, pd.NA], dtype="Int64"),
        "x": pd.Series([5.0, pd.NA], dtype="Float64"),
    }
    with client(server, transport) as c:
        got = c.join({"sku": ["a", "a"]}, features, request_data=nullable)
        plain = c.join(
            {"sku": ["a", "a"]},
            features,
            request_data={"city": ["Paris", None], "n": [3, None], "x": [5.0, None]},
        )
    assert got.to_dict() == plain.to_dict()
    assert got["n2"].values == [6.0, None] and got["x2"].values == [10.0, 14.0]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_servers_error_survives_a_pickle_as_it_was(server: ServerProcess, transport: str) -> None:
    with client(server, transport) as c, pytest.raises(NotFoundError) as raised:
        c.join({"sku": ["a"]}, ["item:nope"])
    error = raised.value
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is NotFoundError and isinstance(copy, FeatureServiceError)
    assert str(copy) == str(error) == f"NOT_FOUND: {error.message}"  # not "NOT_FOUND: NOT_FOUND: ..."
    assert (copy.code, copy.message, copy.details) == (error.code, error.message, error.details)
    assert (copy.http_status, copy.retry_after) == (error.http_status, error.retry_after)
