"""The HTTP API of a real server process, called with a real HTTP client."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.ipc
import pytest

from featurestore.demo.data import FEATURE_REFS, generate
from tests.support import MERCHANTS, ServerProcess, http_get, http_post


@pytest.fixture(scope="module")
def users() -> dict[int, dict[str, object]]:
    t = generate()
    rows = t.slice(0, 5000).to_pylist()
    return {r["user_id"]: r for r in rows}


def test_join_returns_demo_values_in_request_order(
    server: ServerProcess, users: dict[int, dict[str, object]]
) -> None:
    ids = [17, 4242, 1, 17, 1999]
    status, doc = server.join({"entities": {"user_id": ids}, "features": FEATURE_REFS})
    assert status == 200
    names = doc["metadata"]["feature_names"]
    assert names[0] == "user_id"
    assert names[1:] == [r.split(":")[1] for r in FEATURE_REFS]
    cols = dict(zip(names, doc["results"], strict=True))
    assert cols["user_id"]["values"] == ids
    for i, uid in enumerate(ids):
        for ref in FEATURE_REFS:
            name = ref.split(":")[1]
            assert cols[name]["values"][i] == users[uid][name], (uid, name)
            assert cols[name]["statuses"][i] == "PRESENT"
        ts = users[uid]["event_timestamp"]
        assert cols["age"]["event_timestamps"][i] == ts.strftime("%Y-%m-%dT%H:%M:%SZ")  # type: ignore[attr-defined]
    assert doc["metadata"]["registry_version"] >= 1
    assert len(doc["metadata"]["trace_id"]) == 32
    assert doc["metadata"]["partial"] is False


def test_unknown_key_is_not_found_with_null_value(server: ServerProcess) -> None:
    status, doc = server.join({"entities": {"user_id": [10**12]}, "features": ["user_profile:age"]})
    assert status == 200
    age = doc["results"][1]
    assert age == {"values": [None], "statuses": ["NOT_FOUND"], "event_timestamps": [None]}


def test_feature_service_and_full_feature_names(server: ServerProcess) -> None:
    status, doc = server.join(
        {"entities": {"user_id": [3]}, "feature_service": "ranker_v1", "full_feature_names": True}
    )
    assert status == 200
    names = doc["metadata"]["feature_names"]
    assert names[:3] == ["user_id", "user_profile__age", "user_profile__tenure_days"]
    assert len(names) == 17


def test_mixed_entities_one_user_many_items(server: ServerProcess) -> None:
    """One user x candidate items: user features repeat, item and user-item features vary."""
    items = [1, 2, 3, 2, 999_999]
    status, doc = server.join(
        {"entities": {"user_id": [5] * len(items), "item_id": items}, "feature_service": "candidates_v1"}
    )
    assert status == 200
    cols = dict(zip(doc["metadata"]["feature_names"], doc["results"], strict=True))
    assert len(set(cols["age"]["values"])) == 1
    assert cols["affinity"]["values"][:4] == [5001.0, 5002.0, 5003.0, 5002.0]
    assert cols["affinity"]["statuses"][4] == "NOT_FOUND"
    assert cols["price"]["statuses"] == ["PRESENT"] * 4 + ["NOT_FOUND"]
    assert cols["price"]["values"][1] == cols["price"]["values"][3]


def test_every_dtype_ttl_and_null_values(server: ServerProcess) -> None:
    keys = [MERCHANTS[0], MERCHANTS[1], MERCHANTS[5], MERCHANTS[6], MERCHANTS[-1], "nope"]
    feats = ["risk_score", "is_blocked", "opened_at", "embedding", "txn_count", "label"]
    status, doc = server.join(
        {"entities": {"merchant_id": keys}, "features": [f"merchant:{f}" for f in feats]}
    )
    assert status == 200
    cols = dict(zip(doc["metadata"]["feature_names"], doc["results"], strict=True))
    # even rows are fresh, odd rows are older than the 1 h TTL
    assert cols["risk_score"]["statuses"] == [
        "PRESENT",
        "OUTSIDE_MAX_AGE",
        "OUTSIDE_MAX_AGE",
        "PRESENT",
        "PRESENT",
        "NOT_FOUND",
    ]
    assert cols["risk_score"]["values"] == [0.0, None, None, 0.6, 5.0, None]
    assert cols["is_blocked"]["values"][0] is True
    assert cols["opened_at"]["values"][0] == "2020-09-13T12:26:40Z"
    assert cols["opened_at"]["values"][3] == "2020-09-13T12:26:40.000006Z"
    assert cols["embedding"]["values"][0] == [0.0, 0.5, -1.0]
    assert cols["label"]["values"][3] is None and cols["label"]["statuses"][3] == "PRESENT"
    assert cols["label"]["values"][4] == "L50"
    # a stale value is withheld but its event time is reported; unknown keys have none
    assert cols["risk_score"]["event_timestamps"][1] is not None
    assert cols["risk_score"]["event_timestamps"][5] is None


def test_arrow_ipc_response_matches_json(server: ServerProcess) -> None:
    body = json.dumps(
        {"entities": {"user_id": [1, 2, 10**12]}, "features": ["user_profile:age", "user_profile:country"]}
    )
    status, raw, headers = http_post(
        server.url + "/v1/feature/join", body.encode(), {"accept": "application/vnd.apache.arrow.stream"}
    )
    assert status == 200
    assert headers["content-type"] == "application/vnd.apache.arrow.stream"
    table = pa.ipc.open_stream(io.BytesIO(raw)).read_all()
    _, doc = server.join(json.loads(body))
    assert table.column("user_id").to_pylist() == [1, 2, 10**12]
    assert table.column("age").to_pylist() == doc["results"][1]["values"]
    assert table.column("country").to_pylist() == doc["results"][2]["values"]
    assert table.column("age__status").to_pylist() == ["PRESENT", "PRESENT", "NOT_FOUND"]
    assert table.schema.field("age__event_timestamp").type == pa.timestamp("us", tz="UTC")
    assert table.schema.metadata[b"trace_id"]


def test_registry_health_ready_docs(server: ServerProcess) -> None:
    status, raw = http_get(server.url + "/v1/registry")
    doc = json.loads(raw)
    assert status == 200 and doc["version"] >= 1 and len(doc["fingerprint"]) == 64
    assert {v["name"] for v in doc["definitions"]["feature_views"]} >= {"user_profile", "merchant"}
    assert http_get(server.url + "/healthz")[0] == 200
    status, raw = http_get(server.url + "/readyz")
    assert status == 200 and json.loads(raw)["ready"] is True
    assert http_get(server.url + "/docs")[0] == 200
    spec = json.loads(http_get(server.url + "/openapi.json")[1])
    join = spec["paths"]["/v1/feature/join"]["post"]
    assert "entities" in join["requestBody"]["content"]["application/json"]["schema"]["properties"]


def test_metrics_exported(server: ServerProcess) -> None:
    server.join({"entities": {"user_id": [1, 1, 2]}, "features": ["user_profile:age"]})
    server.join({"entities": {"user_id": [1]}, "features": ["nope:x"]})
    text = http_get(server.url + "/metrics")[1].decode()
    for needle in (
        'featurestore_requests_total{outcome="ok",protocol="http",route="/v1/feature/join"}',
        'featurestore_requests_total{outcome="NOT_FOUND",protocol="http",route="/v1/feature/join"}',
        "featurestore_request_duration_seconds_bucket{",
        'featurestore_view_read_duration_seconds_count{store="default",view="user_profile"}',
        "featurestore_join_rows_bucket{",
        "featurestore_join_keys_read_bucket{",
        'featurestore_inflight_requests{protocol="http"}',
        'featurestore_feature_values_total{status="PRESENT",view="user_profile"}',
        "featurestore_registry_version ",
        'featurestore_source_rows_loaded{store="default",view="user_profile"} 100000.0',
    ):
        assert needle in text, needle


def test_unknown_route_is_json_404(server: ServerProcess) -> None:
    status, raw = http_get(server.url + "/v2/nothing")
    assert status == 404
    assert json.loads(raw)["error"]["code"] == "NOT_FOUND"


def test_traceparent_is_honoured(server: ServerProcess) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    status, doc = server.join(
        {"entities": {"user_id": [1]}, "features": ["user_profile:age"]},
        {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
    )
    assert status == 200 and doc["metadata"]["trace_id"] == trace_id


def test_deadline_header_is_validated(server: ServerProcess) -> None:
    status, doc = server.join(
        {"entities": {"user_id": [1]}, "features": ["user_profile:age"]},
        {"x-featurestore-deadline-ms": "soon"},
    )
    assert status == 400 and "deadline" in doc["error"]["message"]
    status, doc = server.join(
        {"entities": {"user_id": [1]}, "features": ["user_profile:age"]}, {"x-featurestore-deadline-ms": "50"}
    )
    assert status == 200 and doc["results"][1]["statuses"] == ["PRESENT"]  # a valid deadline: served as usual


def test_the_join_is_documented_and_other_methods_are_refused(server: ServerProcess) -> None:
    spec = json.loads(http_get(server.url + "/openapi.json")[1])
    join = spec["paths"]["/v1/feature/join"]["post"]
    assert set(join["responses"]) >= {"200", "400", "404", "413"}
    assert "application/vnd.apache.arrow.stream" in join["responses"]["200"]["content"]
    status, raw = http_get(server.url + "/v1/feature/join")
    assert status == 405 and "use POST" in json.loads(raw)["error"]["message"]


def merchant_row(key: str, risk_score: object, embedding: object) -> dict[str, list[object]]:
    return {
        "merchant_id": [key],
        "risk_score": [risk_score],
        "is_blocked": [False],
        "opened_at": ["2024-01-01T00:00:00Z"],
        "embedding": [embedding],
        "txn_count": [1],
        "label": ["pushed"],
    }


def test_push_takes_an_integer_beyond_2_53_into_float_columns(server: ServerProcess) -> None:
    """JSON does not tell 2**60 from 2.0**60: a float column takes it as the nearest double
    (it used to reach pyarrow as an int and come back as a 500)."""
    body = {"feature_view": "merchant", "rows": merchant_row("push-http-big", 2**60, [2**60, 1, 2])}
    status, raw, _ = http_post(server.url + "/v1/feature/push", json.dumps(body).encode())
    assert status == 200, raw
    assert json.loads(raw)["rows_written"] == 1
    status, doc = server.join(
        {
            "entities": {"merchant_id": ["push-http-big"]},
            "features": ["merchant:risk_score", "merchant:embedding"],
        }
    )
    assert status == 200
    cols = dict(zip(doc["metadata"]["feature_names"], doc["results"], strict=True))
    assert cols["risk_score"]["values"] == [float(2**60)]
    assert cols["embedding"]["values"] == [[float(2**60), 1.0, 2.0]]


def test_deadline_header_above_the_configured_deadline_is_accepted(server: ServerProcess) -> None:
    # in range, so valid; the server then keeps its own (lower) deadline
    status, doc = server.join(
        {"entities": {"user_id": [1]}, "features": ["user_profile:age"]},
        {"x-featurestore-deadline-ms": "60000"},
    )
    assert status == 200 and doc["results"][1]["values"] == [72]


def test_invalid_traceparent_starts_a_new_trace(server: ServerProcess) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    for header in (f"ff-{trace_id}-00f067aa0ba902b7-01", f"00-+{trace_id[1:]}-00f067aa0ba902b7-01"):
        status, doc = server.join(
            {"entities": {"user_id": [1]}, "features": ["user_profile:age"]}, {"traceparent": header}
        )
        assert status == 200
        assert len(doc["metadata"]["trace_id"]) == 32 and doc["metadata"]["trace_id"] != trace_id


def test_the_504s_are_documented(server: ServerProcess) -> None:
    spec = json.loads(http_get(server.url + "/openapi.json")[1])
    join = spec["paths"]["/v1/feature/join"]["post"]["responses"]
    push = spec["paths"]["/v1/feature/push"]["post"]["responses"]
    assert "before any store was read" in join["504"]["description"]
    assert "did not confirm the write" in push["504"]["description"]
    # a store failing a join is a partial 200, never a 503: the join's 503 is the shed one
    assert "shed the join" in join["503"]["description"] and "failed the write" in push["503"]["description"]
