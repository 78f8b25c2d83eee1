"""featurestore.client with values at the edges of their types, against a real server over
HTTP and gRPC: timestamps of years the server stores and serves but a datetime cannot
hold (0 and 10000), or that strftime writes unpadded (999), and request_data integers
beyond int64 and float64. Both transports give the same columns, or the same error; but
an event time of exactly the Unix epoch, which gRPC's answer cannot tell from none."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from featurestore.client import FeatureClient, InvalidArgumentError, JoinResult, Status
from featurestore.v1 import featurestore_pb2 as pb
from tests.integration.test_derived_serving import demo_definitions, start_server
from tests.support import CLIENT_DEADLINE_S, ServerProcess

TRANSPORTS = ["http", "grpc"]
PATIENT = CLIENT_DEADLINE_S
# epoch µs of the last µs of year 999 and of year 0, and the first of year 10000
YEAR_999 = -30_610_224_000_000_001
YEAR_0 = -62_135_596_800_000_001
YEAR_10000 = 253_402_300_800_000_000
RENDERED = ["0999-12-31T23:59:59.999999Z", "0000-12-31T23:59:59.999999Z", "10000-01-01T00:00:00Z"]
VALUE_USERS = [9_000_001, 9_000_002, 9_000_003]  # last_purchase_at of those years, fresh rows
EVENT_USERS = [9_000_011, 9_000_012, 9_000_013]  # rows whose event time is of those years
EPOCH_USERS = [9_000_021, 9_000_022]  # rows whose event time is the epoch and 1 µs before it
ROOT = Path(__file__).resolve().parents[2]
FEATURES = ["user_transactions:last_purchase_at", "user_transactions:txn_count_90d"]


def push(server: ServerProcess, users: list[int], purchases: list[int], events: list[int]) -> None:
    """Rows of user_transactions over gRPC, which takes any int64 µs as a timestamp."""
    req = pb.PushRequest(feature_view="user_transactions")
    columns = req.columns
    columns.add(name="user_id").int64_values.values.extend(users)
    columns.add(name="txn_count_90d").int64_values.values.extend([7] * len(users))
    columns.add(name="avg_basket_90d").double_values.values.extend([1.5] * len(users))
    columns.add(name="chargeback_rate_365d").double_values.values.extend([0.0] * len(users))
    columns.add(name="last_purchase_at").timestamp_values.values.extend(purchases)
    columns.add(name="top_category").string_values.values.extend(["books"] * len(users))
    columns.add(name="event_timestamp").timestamp_values.values.extend(events)
    with grpc.insecure_channel(server.grpc_target) as channel:
        call = channel.unary_unary("/featurestore.v1.FeatureService/Push")
        written = pb.PushResponse.FromString(call(req.SerializeToString(), timeout=10)).rows_written
    assert written == len(users)


@pytest.fixture(scope="module")
def demo(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The demo definitions on memory stores, with the rows above pushed."""
    work = tmp_path_factory.mktemp("client-ranges")
    proc = start_server(work, demo_dir, demo_definitions(demo_dir, work / "features.yaml"))
    now = time.time_ns() // 1000
    push(proc, VALUE_USERS, [YEAR_999, YEAR_0, YEAR_10000], [now] * 3)
    push(proc, EVENT_USERS, [now] * 3, [YEAR_999, YEAR_0, YEAR_10000])
    yield proc
    proc.stop()


def joined(server: ServerProcess, users: list[int]) -> dict[str, JoinResult]:
    results = {}
    for transport in TRANSPORTS:
        address = server.url if transport == "http" else f"grpc://{server.grpc_target}"
        with FeatureClient(address, deadline=PATIENT) as client:
            results[transport] = client.join({"user_id": users}, FEATURES)
    return results


def assert_same(results: dict[str, JoinResult]) -> None:
    http, grpc_ = results["http"], results["grpc"]
    assert http.to_dict() == grpc_.to_dict()
    assert http.statuses() == grpc_.statuses()
    assert [c.event_timestamps for c in http] == [c.event_timestamps for c in grpc_]


def test_timestamp_values_of_years_999_0_and_10000_are_rendered_as_the_server_renders_them(
    demo: ServerProcess,
) -> None:
    status, raw = demo.join({"entities": {"user_id": VALUE_USERS}, "features": FEATURES})
    assert status == 200, raw
    assert raw["results"][1]["values"] == RENDERED  # the server's own JSON
    results = joined(demo, VALUE_USERS)
    assert_same(results)
    assert results["grpc"]["last_purchase_at"].values == RENDERED
    assert results["grpc"]["last_purchase_at"].statuses == [Status.PRESENT] * 3


def test_event_times_a_datetime_cannot_hold_are_none_on_both_transports(demo: ServerProcess) -> None:
    status, raw = demo.join({"entities": {"user_id": EVENT_USERS}, "features": FEATURES})
    assert status == 200, raw
    assert raw["results"][1]["event_timestamps"] == RENDERED
    results = joined(demo, EVENT_USERS)
    assert_same(results)
    column = results["grpc"]["txn_count_90d"]
    assert column.event_timestamps == [datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), None, None]
    # years 999 and 0 are past the view's ttl; 10000 is in the future, and PRESENT
    assert column.statuses == [Status.OUTSIDE_MAX_AGE, Status.OUTSIDE_MAX_AGE, Status.PRESENT]
    assert column.values == [None, None, 7]


def test_an_event_time_of_exactly_the_epoch_is_none_over_grpc_only_as_docs_client_md_says(
    demo: ServerProcess,
) -> None:
    """gRPC's event_timestamps use 0 for none: the one instant whose answer differs."""
    push(demo, EPOCH_USERS, [time.time_ns() // 1000] * 2, [0, -1])
    status, raw = demo.join({"entities": {"user_id": EPOCH_USERS}, "features": FEATURES})
    assert status == 200, raw
    assert raw["results"][1]["event_timestamps"] == ["1970-01-01T00:00:00Z", "1969-12-31T23:59:59.999999Z"]
    results = joined(demo, EPOCH_USERS)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert results["http"]["txn_count_90d"].event_timestamps == [epoch, epoch - timedelta(microseconds=1)]
    assert results["grpc"]["txn_count_90d"].event_timestamps == [None, epoch - timedelta(microseconds=1)]
    assert results["http"].to_dict() == results["grpc"].to_dict()
    assert results["http"].statuses() == results["grpc"].statuses()
    docs = " ".join((ROOT / "docs/client.md").read_text().split())
    assert (
        "an event time of exactly 1970-01-01T00:00:00Z is a `datetime` over HTTP and `None` over gRPC" in docs
    )
    assert (
        "over gRPC only, for an event time of exactly 1970-01-01T00:00:00Z" in docs
    )  # (with the other Nones)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_request_data_integer_beyond_int64_is_sent_as_a_double(demo: ServerProcess, transport: str) -> None:
    """The server takes int64 as float64 for a float64 field (item_price), over HTTP an
    integer of any size; over gRPC one beyond int64 goes in double_values."""
    address = demo.url if transport == "http" else f"grpc://{demo.grpc_target}"
    with FeatureClient(address, deadline=PATIENT) as client:
        big = client.join(
            {"user_id": [17, 17]}, feature_service="ranker_v2", request_data={"item_price": [2**64, -(2**70)]}
        )
        same = client.join(
            {"user_id": [17, 17]},
            feature_service="ranker_v2",
            request_data={"item_price": [2.0**64, -(2.0**70)]},
        )
    assert big.to_dict() == same.to_dict()
    assert big["ctr_x_price_bucket"].statuses == [Status.PRESENT] * 2


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("value", [10**400, -(10**400), 10**5000], ids=["1e400", "-1e400", "1e5000"])
def test_a_request_data_integer_beyond_float64_is_invalid_argument_naming_field_and_row(
    demo: ServerProcess, transport: str, value: int
) -> None:
    address = demo.url if transport == "http" else f"grpc://{demo.grpc_target}"
    with FeatureClient(address, deadline=PATIENT) as client, pytest.raises(InvalidArgumentError) as e:
        client.join(
            {"user_id": [17, 17]}, feature_service="ranker_v2", request_data={"item_price": [1.0, value]}
        )
    assert e.value.message.startswith("request_data.item_price[1]: ")
    assert e.value.message.endswith("is outside the float64 range")


def test_an_entity_key_beyond_int64_is_invalid_argument_over_grpc_too(demo: ServerProcess) -> None:
    for address in (demo.url, f"grpc://{demo.grpc_target}"):
        with FeatureClient(address, deadline=PATIENT) as client, pytest.raises(InvalidArgumentError) as e:
            client.join({"user_id": [17, 2**64]}, ["user_profile:age"])
        assert "user_id" in e.value.message, (address, e.value.message)
