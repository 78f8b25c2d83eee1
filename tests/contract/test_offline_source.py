"""The OfflineSource contract: every adapter (a Parquet file, a directory of Parquet
parts, hive partition directories, a ClickHouse table) runs this same suite. Then the
Parquet source's faults that opening a dataset does not see."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path

import clickhouse_connect
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.errors import FailedPrecondition, InvalidArgument
from featurestore.model import DType, Entity, Feature, FeatureView
from featurestore.offline import (
    ClickHouseOfflineSource,
    EventTimeRange,
    OfflineSource,
    ParquetOfflineSource,
    ScanCounts,
)
from featurestore.rows import conform
from featurestore.sources.clickhouse import ClickHouseOptions
from tests.contract.adapters import OFFLINE_SOURCES, make_offline_source

DAY_US = 86_400_000_000
T0 = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z
COLUMNS = ["user_id", "score", "tag", "event_timestamp"]
KEYS = ["user_id"]


def rows() -> pa.Table:
    """Users 1..30, each with a row on days 0, 1 and 2 (score = 100 * user + day), written
    newest first for odd users so file order never decides; user 7 also has day 5."""
    users, scores, times = [], [], []
    for user in range(1, 31):
        days = [2, 1, 0] if user % 2 else [0, 1, 2]
        for day in [*days, *([5] if user == 7 else [])]:
            users.append(user)
            scores.append(100 * user + day)
            times.append(T0 + day * DAY_US + user)  # distinct times: no ties
    return pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "score": pa.array(scores, pa.int64()),
            "tag": pa.array([f"t{s}" for s in scores]),
            "event_timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
        }
    )


@pytest.fixture(params=OFFLINE_SOURCES)
def source(request: pytest.FixtureRequest) -> OfflineSource:
    return make_offline_source(request.param, request, rows())


async def read(
    source: OfflineSource, span: EventTimeRange = EventTimeRange(), batch_rows: int = 7
) -> dict[int, int]:
    """user -> score of the rows the source yields; fails on a key yielded twice."""
    out: dict[int, int] = {}
    async for batch in source.latest_batches(COLUMNS, KEYS, "event_timestamp", batch_rows, span):
        assert set(batch.schema.names) == set(COLUMNS)
        for user, score in zip(
            batch.column("user_id").to_pylist(), batch.column("score").to_pylist(), strict=True
        ):
            assert user not in out, f"user {user} yielded twice"
            out[user] = score
    return out


def newest(day: Callable[[int], int]) -> dict[int, int]:
    return {u: 100 * u + day(u) for u in range(1, 31)}


async def test_the_latest_row_of_every_key_by_event_time(source: OfflineSource) -> None:
    assert await read(source) == newest(lambda u: 5 if u == 7 else 2)
    assert await source.count("event_timestamp") == 91


async def test_a_start_and_end_keep_the_latest_row_inside_the_range(source: OfflineSource) -> None:
    span = EventTimeRange(start_us=T0 + DAY_US, end_us=T0 + 2 * DAY_US)  # day 1 only
    assert await read(source, span) == newest(lambda u: 1)
    assert await source.count("event_timestamp", span) == 30


async def test_after_a_watermark_only_newer_rows_are_read(source: OfflineSource) -> None:
    span = EventTimeRange(after_us=T0 + 2 * DAY_US + 30)  # every day-2 row is at or before it
    assert await read(source, span) == {7: 705}
    assert await source.count("event_timestamp", span) == 1
    assert await read(source, EventTimeRange(after_us=T0 + 9 * DAY_US)) == {}


async def test_batches_may_be_any_size(source: OfflineSource) -> None:
    assert await read(source, batch_rows=1) == await read(source, batch_rows=10_000)


async def test_a_missing_column_is_named(source: OfflineSource) -> None:
    with pytest.raises(InvalidArgument, match="'nope'"):
        async for _ in source.latest_batches([*COLUMNS, "nope"], KEYS, "event_timestamp", 10):
            pass


def test_the_source_describes_itself_as_a_uri(source: OfflineSource) -> None:
    assert source.describe().split("://")[0] in ("file", "clickhouse")


# -- Parquet: what ds.dataset does not check when it opens (it reads the first file only)


async def test_a_null_entity_key_is_refused_naming_the_column(tmp_path: Path) -> None:
    """It was numpy's _UFuncOutputCastingError out of latest_mask, before conform could
    report the nulls."""
    table = rows().slice(0, 4)
    keys = pa.array([1, None, 1, None], pa.int64())
    pq.write_table(table.set_column(0, "user_id", keys), tmp_path / "nulls.parquet")
    with pytest.raises(InvalidArgument, match=r"nulls\.parquet: key column 'user_id' has null values"):
        await read(ParquetOfflineSource(str(tmp_path / "nulls.parquet")))


async def test_a_file_that_is_not_parquet_among_the_parts_fails_naming_it(tmp_path: Path) -> None:
    pq.write_table(rows(), tmp_path / "a-part.parquet")
    (tmp_path / "z-notes.txt").write_text("notes\n")  # sorts after the part ds.dataset looks at
    source = ParquetOfflineSource(str(tmp_path))
    with pytest.raises(
        FailedPrecondition, match=rf"cannot read Parquet {re.escape(str(tmp_path))}: .*z-notes"
    ):
        await source.count("event_timestamp")
    with pytest.raises(FailedPrecondition, match=r"z-notes\.txt"):
        await read(source)


async def test_parts_whose_column_types_drifted_fail_as_one_error(tmp_path: Path) -> None:
    pq.write_table(rows(), tmp_path / "part-0.parquet")
    drifted = rows().slice(0, 1).set_column(1, "score", pa.array(["x"]))  # int64 in part-0
    pq.write_table(drifted, tmp_path / "part-1.parquet")
    with pytest.raises(FailedPrecondition, match=rf"cannot read Parquet {re.escape(str(tmp_path))}: .*'x'"):
        await read(ParquetOfflineSource(str(tmp_path)))


async def test_the_stream_counts_the_rows_in_range_and_the_keys_before_its_first_batch(
    source: OfflineSource,
) -> None:
    """What a run read (every row in the range) and what progress counts toward (a row
    per key): its total was the rows in range, so a source of three rows a key stopped
    at a third with an ETA left (review s55)."""
    for span, in_range, latest in (
        (EventTimeRange(), 91, 30),
        (EventTimeRange(after_us=T0 + 2 * DAY_US + 30), 1, 1),
    ):
        counts = ScanCounts()
        async for _ in source.latest_batches(COLUMNS, KEYS, "event_timestamp", 7, span, counts):
            assert (counts.in_range, counts.latest) == (in_range, latest)  # known at the first batch
        assert (counts.in_range, counts.latest) == (in_range, latest)


# -- Parquet: key columns Arrow cannot sort as they are


def categorical_keys(path: Path) -> Path:
    """What pandas writes for a Categorical column (``to_parquet``, which stores the Arrow
    schema): dictionary<values=string, indices=int8>."""
    skus = pa.DictionaryArray.from_arrays(pa.array([1, 0, 1, 2], pa.int8()), pa.array(["a", "b", "c"]))
    times = pa.array([3_000_000, 1_000_000, 5_000_000, 2_000_000], pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table({"sku": skus, "n": [1, 2, 3, 4], "event_timestamp": times}), path)
    assert pa.types.is_dictionary(pq.read_schema(path).field("sku").type)
    return path


async def test_a_dictionary_encoded_key_column_is_read_by_its_values(tmp_path: Path) -> None:
    """It was an ArrowTypeError out of the pre-pass's sort: a traceback from the CLI."""
    source = ParquetOfflineSource(str(categorical_keys(tmp_path / "cat.parquet")))
    batches = [
        b
        async for b in source.latest_batches(["sku", "n", "event_timestamp"], ["sku"], "event_timestamp", 10)
    ]
    table = pa.Table.from_batches(batches)
    assert dict(zip(table.column("sku").to_pylist(), table.column("n").to_pylist(), strict=True)) == {
        "a": 2, "b": 3, "c": 4
    }  # fmt: skip


async def test_a_key_column_of_a_type_that_cannot_be_ordered_is_refused_naming_it(tmp_path: Path) -> None:
    pq.write_table(
        pa.table({"k": pa.array([[1], [2]]), "event_timestamp": pa.array([1, 2], pa.timestamp("us"))}),
        tmp_path / "list.parquet",
    )
    source = ParquetOfflineSource(str(tmp_path / "list.parquet"))
    with pytest.raises(InvalidArgument, match=r"cannot order the rows .*'k' list<element: int64>") as e:
        async for _ in source.latest_batches(["k", "event_timestamp"], ["k"], "event_timestamp", 10):
            pass
    assert e.value.details[0] == {"column": "k", "type": "list<element: int64>"}


# -- ClickHouse: DateTime, its most common time type, comes out of Arrow as uint32 seconds


async def test_clickhouse_datetime_columns_are_read_as_utc_timestamps(chdb_dsn: str) -> None:
    """An event time and a timestamp feature of ClickHouse's ``DateTime`` (in UTC, in a
    zone, Nullable) read as the instants they hold and conform to the view: every run
    failed with `column 'ts' has type uint32, expected timestamp[us, tz=UTC]`."""
    client = clickhouse_connect.get_client(dsn=ClickHouseOptions(dsn=chdb_dsn).client_dsn)
    db = f"wh{uuid.uuid4().hex[:10]}"
    client.command(f"CREATE DATABASE {db}")
    client.command(
        f"CREATE TABLE {db}.tx (user_id Int64, seen Nullable(DateTime('Asia/Tokyo')), ts DateTime) "
        "ENGINE = MergeTree ORDER BY user_id"
    )
    client.command(
        f"INSERT INTO {db}.tx VALUES (1, '2024-01-01 09:00:00', '2024-01-01 00:00:00'), "
        f"(1, NULL, '2024-01-03 00:00:00'), (2, '2024-01-02 09:00:00', '2024-01-02 00:00:00')"
    )
    view = FeatureView("tx", (Entity("user_id", DType.INT64),), (Feature("seen", DType.TIMESTAMP),))
    source = ClickHouseOfflineSource(chdb_dsn, f"{db}.tx")
    columns = ["user_id", "seen", "ts"]
    for span, expect in (
        (EventTimeRange(), {1: (None, T0 + 2 * DAY_US), 2: (T0 + DAY_US, T0 + DAY_US)}),
        (EventTimeRange(end_us=T0 + 2 * DAY_US), {1: (T0, T0), 2: (T0 + DAY_US, T0 + DAY_US)}),
    ):
        batches = [b async for b in source.latest_batches(columns, ["user_id"], "ts", 10, span)]
        rows = conform(view, pa.Table.from_batches(batches), "ts")
        got = zip(
            *(rows.column(c).cast(pa.int64()).to_pylist() for c in ("user_id", "seen", "event_timestamp")),
            strict=True,
        )
        assert {u: (seen, at) for u, seen, at in got} == expect
