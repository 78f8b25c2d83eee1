"""The OfflineSource contract: every adapter (a Parquet file, a directory of Parquet
parts, hive partition directories, a ClickHouse table) runs this same suite. Then the
Parquet source's faults that opening a dataset does not see."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.errors import FailedPrecondition, InvalidArgument
from featurestore.offline import EventTimeRange, OfflineSource, ParquetOfflineSource
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
