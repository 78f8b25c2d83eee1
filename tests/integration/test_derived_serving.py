"""Derived features on a real server process (the demo definitions, memory stores):
values against the data, request_data errors over HTTP and gRPC, Arrow and gRPC
responses, the registry, lineage, and a registry swap that changes an expression under
continuous load."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.api.proto_codec import column_values
from featurestore.v1 import featurestore_pb2 as pb
from featurestore.v1 import featurestore_pb2_grpc as pbg
from tests.support import ROOT, Background, ServerProcess, http_get, http_post, wait_until

DEMO = ROOT / "featurestore" / "demo" / "features.yaml"
EDGES = [0.0, 10.0, 50.0, 100.0]
DERIVED = ["engagement_score", "spend_per_session", "ctr_x_price_bucket", "value_score"]


def demo_definitions(demo_dir: Path, out: Path, value_score: str | None = None) -> Path:
    """The demo file with absolute Parquet paths (and optionally another value_score)."""
    text = DEMO.read_text()
    for name in ("users.parquet", "user_transactions.parquet"):
        text = text.replace(f"path: {name}", f"path: {demo_dir / name}")
    if value_score is not None:
        text = text.replace('"engagement_score + ctr_x_price_bucket"', f'"{value_score}"')
    out.write_text(text)
    return out


def start_server(work: Path, demo_dir: Path, definitions: Path) -> ServerProcess:
    config = work / "config.yaml"
    config.write_text(
        f"registry: {{path: {work / 'registry'}}}\n"
        "stores: {default: {kind: memory}, analytics: {kind: memory}}\n"
        f"derived: {{cache_dir: {work / 'kernels'}}}\n"
        "limits: {deadline_ms: 5000}\n"
    )
    return ServerProcess(
        ["--config", str(config), "--definitions", str(definitions)], log_path=work / "server.log"
    ).start(timeout=90)


@pytest.fixture(scope="module")
def demo_server(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("derived-server")
    proc = start_server(work, demo_dir, demo_definitions(demo_dir, work / "features.yaml"))
    yield proc
    proc.stop()


def expected(demo_dir: Path, users: list[int], prices: list[float]) -> dict[str, list[float | None]]:
    """The four demo features computed with numpy from the demo data itself."""
    t = pq.read_table(demo_dir / "users.parquet", columns=["user_id", "ctr_30d", "sessions_30d", "spend_30d"])
    row = {int(u): i for i, u in enumerate(t["user_id"].to_numpy())}
    out: dict[str, list[float | None]] = {name: [] for name in DERIVED}
    for user, price in zip(users, prices, strict=True):
        if user not in row:
            for name in DERIVED:
                out[name].append(None)
            continue
        i = row[user]
        ctr, s30, spend = (float(t[c][i].as_py()) for c in ("ctr_30d", "sessions_30d", "spend_30d"))
        eng = ctr * float(np.log1p(s30))
        cpb = ctr * float(np.searchsorted(EDGES, price, side="right"))
        values = [eng, spend / (s30 + 1e-6), cpb, eng + cpb]
        for name, v in zip(DERIVED, values, strict=True):
            out[name].append(v)
    return out


def test_the_demo_derived_join_matches_values_computed_from_the_data(
    demo_server: ServerProcess, demo_dir: Path
) -> None:
    rng = np.random.default_rng(3)
    users = [int(u) for u in rng.integers(1, 100_001, 60)] + [17, 4242, 999_999_999]
    prices = [round(float(p), 2) for p in rng.uniform(-5, 150, 60)] + [5.0, 75.0, 200.0]
    prices[:5] = [*EDGES, -0.01]  # exactly on the edges, and below the first
    status, doc = demo_server.join(
        {
            "entities": {"user_id": users},
            "feature_service": "ranker_v2",
            "request_data": {"item_price": prices},
        }
    )
    assert status == 200, doc
    names = doc["metadata"]["feature_names"]
    assert names[-4:] == DERIVED and len(names) == 1 + 16 + 4
    cols = dict(zip(names, doc["results"], strict=True))
    want = expected(demo_dir, users, prices)
    for name in DERIVED:
        got = cols[name]["values"]
        assert [v is None for v in got] == [v is None for v in want[name]], name
        assert [v for v in got if v is not None] == pytest.approx(
            [v for v in want[name] if v is not None], rel=1e-12
        )
        assert cols[name]["statuses"][-1] == "NOT_FOUND" and cols[name]["statuses"][0] == "PRESENT"
    # the issue's own example: edges [0, 10, 50, 100]: 5 -> 1, 75 -> 3, 200 -> 4
    ctr = cols["ctr_30d"]["values"][-3:-1]
    assert cols["ctr_x_price_bucket"]["values"][-3:-1] == pytest.approx([ctr[0] * 1, ctr[1] * 3])
    assert cols["value_score"]["event_timestamps"][:2] == cols["ctr_30d"]["event_timestamps"][:2]


def test_the_existing_service_keeps_its_columns(demo_server: ServerProcess) -> None:
    status, doc = demo_server.join({"entities": {"user_id": [17]}, "feature_service": "ranker_v1"})
    assert status == 200 and len(doc["metadata"]["feature_names"]) == 17


@pytest.mark.parametrize(
    ("request_data", "message"),
    [
        (None, "request_data.item_price is missing: user_derived:ctr_x_price_bucket needs it"),
        ({"item_price": [1.0]}, "request_data.item_price has 1 values for 2 entity rows"),
        ({"item_price": [1.0, "cheap"]}, "request_data.item_price[1]: expected float64, got str 'cheap'"),
        (
            {"item_price": [1.0, 10**400]},
            "request_data.item_price[1]: 1000000000000000000000... (401 digits) is outside the float64 range",
        ),
        # the wrong shape, refused while decoding: msgspec's message with the field's name
        ({"item_price": 5.0}, "Expected `array`, got `float` - at `$.request_data.item_price`"),
        ({"item_price": "5"}, "Expected `array`, got `str` - at `$.request_data.item_price`"),
        ({"item_price": None}, "Expected `array`, got `null` - at `$.request_data.item_price`"),
        ({"item_price": [[5.0], 1.0]}, "got `array` - at `$.request_data.item_price[0]`"),
    ],
)
def test_request_data_errors_over_http_are_400s_naming_the_field(
    demo_server: ServerProcess, request_data: Any, message: str
) -> None:
    body: dict[str, Any] = {"entities": {"user_id": [17, 4242]}, "features": ["user_derived:value_score"]}
    if request_data is not None:
        body["request_data"] = request_data
    status, doc = demo_server.join(body)
    assert status == 400
    assert doc["error"]["code"] == "INVALID_ARGUMENT" and message in doc["error"]["message"]
    assert doc["error"]["details"][0]["request_data"] == "item_price"


def test_a_request_data_field_no_requested_feature_needs_is_ignored_unless_malformed(
    demo_server: ServerProcess,
) -> None:
    body: dict[str, Any] = {
        "entities": {"user_id": [17]},
        "features": ["user_derived:engagement_score"],  # reads no request field
        "request_data": {"item_price": [1.0, 2.0, 3.0], "extra": ["anything"]},
    }
    status, _ = demo_server.join(body)
    assert status == 200
    body["request_data"]["extra"] = 5
    status, doc = demo_server.join(body)
    assert status == 400 and "at `$.request_data.extra`" in doc["error"]["message"]
    assert doc["error"]["details"] == [{"request_data": "extra"}]


def test_a_request_data_body_of_the_wrong_shape_is_a_400(demo_server: ServerProcess) -> None:
    body = {"entities": {"user_id": [17]}, "features": ["user_derived:value_score"], "request_data": [1.0]}
    status, doc = demo_server.join(body)
    assert status == 400 and "request_data" in doc["error"]["message"]


def grpc_join(
    server: ServerProcess, features: list[str], users: list[int], columns: list[pb.RequestColumn]
) -> Any:
    req = pb.JoinRequest(features=features)
    req.entities.add(name="user_id").int64_values.values.extend(users)
    req.request_data.extend(columns)
    with grpc.insecure_channel(server.grpc_target) as channel:
        return pbg.FeatureServiceStub(channel).Join(req, timeout=10)  # type: ignore[no-untyped-call]


def arrow_join(server: ServerProcess, body: dict[str, Any]) -> pa.Table:
    status, raw, _ = http_post(
        server.url + "/v1/feature/join",
        json.dumps(body).encode(),
        {"accept": "application/vnd.apache.arrow.stream"},
    )
    assert status == 200
    return pa.ipc.open_stream(raw).read_all()


def price(
    values: list[Any], kind: str = "double_values", null_rows: tuple[int, ...] = ()
) -> pb.RequestColumn:
    col = pb.RequestColumn(name="item_price", null_rows=null_rows)
    getattr(col, kind).values.extend(values)
    return col


def test_request_data_errors_over_grpc_are_invalid_argument_naming_the_field(
    demo_server: ServerProcess,
) -> None:
    for columns, message in (
        ([], "request_data.item_price is missing"),
        ([price(["5"], "string_values")], "request_data.item_price[0]: expected float64, got str"),
        ([price([True], "bool_values")], "request_data.item_price[0]: expected float64, got bool"),
        ([price([1.0, 2.0])], "request_data.item_price has 2 values for 1 entity rows"),
        ([price([1.0]), price([2.0])], "request_data field 'item_price' is given twice"),
        ([price([math.nan])], "request_data.item_price[0]: nan is not a finite number"),
        ([price([math.inf])], "request_data.item_price[0]: inf is not a finite number"),
        ([price([-math.inf])], "request_data.item_price[0]: -inf is not a finite number"),
        ([price([1.0], null_rows=(1,))], "request_data.item_price.null_rows: row 1 is past its 1 values"),
    ):
        with pytest.raises(grpc.RpcError) as e:
            grpc_join(demo_server, ["user_derived:value_score"], [17], columns)
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert message in (e.value.details() or "")


def test_int64_request_values_over_grpc_are_accepted_to_the_ends_of_their_range(
    demo_server: ServerProcess,
) -> None:
    """A float64 field takes int64 values; gRPC cannot carry an integer beyond int64
    (JSON can: the 400 above)."""
    ends = [-(2**63), 2**63 - 1]
    resp = grpc_join(
        demo_server, ["user_derived:ctr_x_price_bucket"], [17, 17], [price(ends, "int64_values")]
    )
    values = column_values(resp.results[1])
    assert values[0] == 0.0 and values[1] is not None and values[1] > 0


def test_grpc_and_arrow_responses_carry_derived_features(demo_server: ServerProcess) -> None:
    features = ["user_derived:ctr_x_price_bucket", "user_derived:value_score"]
    body = {
        "entities": {"user_id": [17, 4242, 5]},
        "features": features,
        "request_data": {"item_price": [5, 75.0, None]},
    }
    _, doc = demo_server.join(body)
    # ints are accepted for a float64 field; a null price gives a null value, still PRESENT
    resp = grpc_join(
        demo_server, features, [17, 4242, 5], [price([5, 75, 0], "int64_values", null_rows=(2,))]
    )
    for i, col in enumerate(resp.results[1:], start=1):
        assert column_values(col) == doc["results"][i]["values"]
        assert [pb.Status.Name(s) for s in col.statuses] == doc["results"][i]["statuses"] == ["PRESENT"] * 3
    assert list(resp.results[1].null_rows) == [2]
    # a null row's value is not looked at (a client may fill it with NaN)
    nan_null = grpc_join(demo_server, features, [17, 4242, 5], [price([5.0, 75.0, math.nan], null_rows=(2,))])
    assert [column_values(c) for c in nan_null.results] == [column_values(c) for c in resp.results]
    table = arrow_join(demo_server, body)
    assert table.column("value_score").to_pylist() == doc["results"][2]["values"]
    assert table.column("value_score__status").to_pylist() == ["PRESENT"] * 3


def test_from_eight_rows_on_json_grpc_and_arrow_carry_the_same_derived_values_and_nulls(
    demo_server: ServerProcess,
) -> None:
    """From derived.evaluate.ARRAY_ROWS rows on, a float64 derived feature is served from
    the kernel's output matrix (NaN = null): every encoding still writes null, never NaN.
    Row 2 has a null price (null, PRESENT), row 3 an unknown user (null, NOT_FOUND), row
    5 a zero-session spend ratio (finite)."""
    users = [17, 4242, 5, 999_999_999, 8, 9, 10, 11, 12, 13, 14, 15]
    prices: list[float | None] = [5.0, 75.0, None, 20.0, 0.0, 10.0, 49.99, 50.0, 100.0, 150.0, 1.5, 99.0]
    features = [
        "user_derived:ctr_x_price_bucket",
        "user_derived:value_score",
        "user_derived:engagement_score",
    ]
    body = {"entities": {"user_id": users}, "features": features, "request_data": {"item_price": prices}}
    status, doc = demo_server.join(body)
    assert status == 200, doc
    results = doc["results"][1:]
    for col in results[:2]:  # the two that read the price
        assert col["values"][2] is None and col["statuses"][2] == "PRESENT"
    for col in results:
        assert col["values"][3] is None and col["statuses"][3] == "NOT_FOUND"
        assert all(
            isinstance(v, float) and math.isfinite(v) for i, v in enumerate(col["values"]) if i not in (2, 3)
        )
    assert results[2]["values"][2] is not None  # engagement_score does not read the price
    resp = grpc_join(
        demo_server,
        features,
        users,
        [price([0.0 if p is None else p for p in prices], null_rows=(2,))],
    )
    for i, col in enumerate(resp.results[1:], start=1):
        assert column_values(col) == doc["results"][i]["values"]
        assert [pb.Status.Name(s) for s in col.statuses] == doc["results"][i]["statuses"]
    assert [list(c.null_rows) for c in resp.results[1:]] == [[2], [2], []]
    table = arrow_join(demo_server, body)
    for i, name in enumerate(["ctr_x_price_bucket", "value_score", "engagement_score"], start=1):
        assert table.column(name).to_pylist() == doc["results"][i]["values"]
        assert table.column(name).null_count == sum(v is None for v in doc["results"][i]["values"])


def test_the_registry_lists_derived_views(demo_server: ServerProcess) -> None:
    status, raw = http_get(demo_server.url + "/v1/registry")
    assert status == 200
    (view,) = json.loads(raw)["definitions"]["derived_views"]
    assert view["name"] == "user_derived" and [f["name"] for f in view["features"]] == DERIVED
    assert view["request_schema"] == [
        {"name": "item_price", "dtype": "float64", "description": "Price of the candidate item (USD)"}
    ]


def gql(server: ServerProcess, query: str) -> dict[str, Any]:
    status, raw, _ = http_post(server.url + "/graphql", json.dumps({"query": query}).encode())
    doc = json.loads(raw)
    assert status == 200 and "errors" not in doc, doc
    return doc["data"]  # type: ignore[no-any-return]


def test_lineage_walks_from_a_derived_feature_to_stored_features_to_tables(
    demo_server: ServerProcess,
) -> None:
    data = gql(
        demo_server,
        '{ feature(id: "user_derived:value_score") { view upstream(depth: 3) { id producedBy { name role } } } }',
    )
    upstream = {f["id"]: f["producedBy"] for f in data["feature"]["upstream"]}
    assert set(upstream) == {
        "user_derived:engagement_score",
        "user_derived:ctr_x_price_bucket",
        "user_activity:ctr_30d",
        "user_activity:sessions_30d",
    }
    tables = {(t["role"], t["name"]) for t in upstream["user_activity:ctr_30d"]}
    assert ("upstream", "warehouse.sessions") in tables
    assert any(role == "batch" and name.endswith("users.parquet") for role, name in tables)

    demo_server.join(
        {
            "entities": {"user_id": [17]},
            "features": ["user_derived:ctr_x_price_bucket"],
            "request_data": {"item_price": [5.0]},
        }
    )
    query = '{ lineageEvents(featureId: "user_derived:ctr_x_price_bucket", limit: 5) { sourceTable upstreamDeps } }'
    wait_until(lambda: gql(demo_server, query)["lineageEvents"], 15, "the derived feature's lineage event")
    event = gql(demo_server, query)["lineageEvents"][0]
    assert event == {
        "sourceTable": "derived://demo/user_derived",
        "upstreamDeps": ["user_activity:ctr_30d", "request:item_price"],
    }
    impact = gql(
        demo_server, '{ table(name: "warehouse.sessions") { impact(depth: 3) { features featureServices } } }'
    )
    assert "user_derived:value_score" in impact["table"]["impact"]["features"]
    assert "ranker_v2" in impact["table"]["impact"]["featureServices"]


def metric(server: ServerProcess, name: str, labels: str) -> float:
    text = http_get(server.url + "/metrics")[1].decode()
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}}"):
            return float(line.split()[-1])
    return 0.0


def test_a_registry_swap_changes_an_expression_under_load_with_no_torn_read(
    demo_dir: Path, tmp_path: Path
) -> None:
    """value_score goes from eng + cpb to eng - cpb while requests keep coming: every
    response is wholly one version, and the serving process never compiles."""
    server = start_server(tmp_path, demo_dir, demo_definitions(demo_dir, tmp_path / "v1.yaml"))
    try:
        users = list(range(1, 41))
        prices = [float(p) for p in np.linspace(0, 120, 40)]
        body = {
            "entities": {"user_id": users},
            "features": [
                "user_derived:engagement_score",
                "user_derived:ctr_x_price_bucket",
                "user_derived:value_score",
            ],
            "request_data": {"item_price": prices},
        }
        seen: dict[int, int] = {}
        lock = threading.Lock()

        def step() -> None:
            status, doc = server.join(body)
            assert status == 200, doc
            eng, cpb, value = (r["values"] for r in doc["results"][1:])
            version = doc["metadata"]["registry_version"]
            sign = 1 if version == 1 else -1
            assert value == pytest.approx([e + sign * c for e, c in zip(eng, cpb, strict=True)]), (
                f"torn at v{version}"
            )
            with lock:
                seen[version] = seen.get(version, 0) + 1

        config = tmp_path / "cli.yaml"  # the same registry; the CLI builds into its own cache
        config.write_text(
            f"registry: {{path: {tmp_path / 'registry'}}}\nderived: {{cache_dir: {tmp_path / 'cli-kernels'}}}\n"
        )
        v2 = demo_definitions(demo_dir, tmp_path / "v2.yaml", "engagement_score - ctr_x_price_bucket")
        with Background(step, threads=2) as load:
            wait_until(lambda: seen.get(1, 0) >= 20, 30, "load on version 1")
            out = subprocess.run(
                [sys.executable, "-m", "featurestore.cli", "apply", str(v2), "--config", str(config)],
                capture_output=True, text=True, cwd=ROOT, timeout=120,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
            assert (
                "value_score: engagement_score + ctr_x_price_bucket -> engagement_score - ctr_x_price_bucket"
                in out.stdout
            )
            wait_until(lambda: seen.get(2, 0) >= 20, 60, "load on version 2")
            wait_until(lambda: not load.errors, 1, "no failed request")
        assert set(seen) == {1, 2}
        # The new kernel was compiled by the build process and loaded from its cache: the
        # serving process itself never compiled, so no request waited for a compile.
        assert metric(server, "featurestore_derived_compiles_total", 'result="compiled"') >= 1
        assert metric(server, "featurestore_derived_compiles_total", 'result="loaded"') >= 2
        assert metric(server, "featurestore_derived_compiles_total", 'result="cache_missed"') == 0
    finally:
        server.stop()
