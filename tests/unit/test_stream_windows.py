"""Windows at read time: the numpy path (many records) and the plain-Python path (a few)
give the answers of the straightforward recomputation (tests/unit/stream_reference.py)."""

from __future__ import annotations

import random

import pytest

from featurestore.model import Aggregation, StreamSource, StreamSpec
from featurestore.streaming import windows
from featurestore.streaming.tiles import TileAccumulator, layout_of
from tests.unit.stream_reference import Accepted, close, window_values

TILE_US = 60_000_000
AGGS = [
    ("n_3", "count", "", 3),
    ("n_amount_10", "count", "amount", 10),
    ("sum_3", "sum", "amount", 3),
    ("avg_10", "avg", "amount", 10),
    ("min_10", "min", "amount", 10),
    ("max_3", "max", "amount", 3),
    ("last_3", "last", "amount", 3),
    ("last_10", "last", "amount", 10),
    ("sum_60", "sum", "amount", 60),
]
SPEC = StreamSpec(
    StreamSource("t", ("u",)), tuple(Aggregation(n, f, c, w * 60) for n, f, c, w in AGGS), tile_seconds=60
)
LAYOUT = layout_of(SPEC)


def events(seed: int, keys: int, per_key: int, now_us: int) -> list[Accepted]:
    rng = random.Random(seed)
    out = []
    for i in range(keys * per_key):
        key = rng.randrange(keys)
        ts = now_us - rng.randrange(-2 * TILE_US, 70 * TILE_US)  # a few in the reader's future
        amount = None if rng.random() < 0.2 else rng.uniform(-50, 200)
        out.append(Accepted(key, ts, amount, 0, i))
    return out


def blobs_of(evs: list[Accepted], keys: int) -> list[bytes | None]:
    acc = TileAccumulator(LAYOUT)
    for e in evs:
        acc.add(str(e.key), e.ts_us, {} if e.amount is None else {"amount": e.amount})
    by_key: dict[str, list[bytes]] = {}
    for key, tiles in acc.records.items():
        by_key[key] = [LAYOUT.pack(rec) for rec in tiles.values()]
    return [b"".join(by_key[str(k)]) if str(k) in by_key else None for k in range(keys)]


@pytest.mark.parametrize("small", [0, 10**9], ids=["numpy", "python"])
@pytest.mark.parametrize(("keys", "per_key"), [(1, 3), (1, 40), (7, 25), (40, 5)])
def test_both_paths_answer_as_the_recomputation(
    monkeypatch: pytest.MonkeyPatch, small: int, keys: int, per_key: int
) -> None:
    monkeypatch.setattr(windows, "SMALL_READ_RECORDS", small)
    now_us = 29_000_000 * TILE_US + 17_000_000
    evs = events(keys * 31 + per_key, keys, per_key, now_us)
    wanted = list(range(len(AGGS)))
    got = windows.compute(LAYOUT, blobs_of(evs, keys + 1), now_us, wanted)  # one key more: never seen
    tiles = [(n, f, c, w) for n, f, c, w in AGGS]
    for key in range(keys + 1):
        found, newest, expected = window_values(evs, key, now_us, TILE_US, tiles)
        assert got.found[key] is found, key
        if not found:
            continue
        assert got.event_ts_us[key] == newest
        for j, (name, *_) in enumerate(AGGS):
            assert close(got.columns[j][key], expected[name]), (
                key,
                name,
                got.columns[j][key],
                expected[name],
            )


def test_a_subset_of_aggregations_comes_back_in_the_order_asked() -> None:
    now_us = 29_000_000 * TILE_US
    evs = [Accepted(0, now_us - 1, 5.0, 0, 0), Accepted(0, now_us - 2 * TILE_US, 7.0, 0, 1)]
    got = windows.compute(LAYOUT, blobs_of(evs, 1), now_us, [5, 0])
    assert got.columns == [[7.0], [2]]
