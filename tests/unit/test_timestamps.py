"""Event timestamps in JSON responses: the cached, vectorized rendering writes what one
strftime per value would (years 1000-9999; below, four digits), whether the cache holds
the value or not."""

from __future__ import annotations

import random
import time

import numpy as np
import orjson
import pytest

from featurestore.api import timestamps
from featurestore.api.timestamps import iso_list, iso_utc


def reference(us: int) -> str:
    secs, frac = divmod(us, 1_000_000)
    s = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    return f"{s}.{frac:06d}Z" if frac else f"{s}Z"


@pytest.fixture(autouse=True)
def cold_cache() -> None:
    timestamps._cache.clear()


def test_whole_seconds_have_no_fraction_and_others_have_six_digits() -> None:
    assert iso_utc(1_704_067_207_000_000) == "2024-01-01T00:00:07Z"
    assert iso_utc(1_704_067_207_000_123) == "2024-01-01T00:00:07.000123Z"
    assert iso_utc(0) == "1970-01-01T00:00:00Z"


def test_instants_before_1970_round_down_like_strftime() -> None:
    assert iso_utc(-1_000_000) == "1969-12-31T23:59:59Z"
    assert iso_utc(-1) == "1969-12-31T23:59:59.999999Z"
    assert iso_list([-1, -1_500_000]) == [reference(-1), reference(-1_500_000)]


def test_random_instants_match_strftime_cold_and_cached() -> None:
    rng = random.Random(7)
    values: list[int | None] = [
        rng.choice([rng.randrange(-(10**15), 4 * 10**15), rng.randrange(0, 4 * 10**9) * 1_000_000, None])
        for _ in range(5_000)
    ]
    expected = [None if v is None else reference(v) for v in values]
    assert iso_list(values) == expected  # cold: every value rendered by numpy
    assert iso_list(values) == expected  # warm: every value from the cache
    half = values[:2_500] + [v + 1 for v in values[2_500:] if v is not None]  # half hits, half misses
    assert iso_list(half) == [None if v is None else reference(v) for v in half]


@pytest.mark.parametrize("size", [1, 3, 7, 8, 20])
def test_a_few_misses_rendered_one_by_one_match_strftime_as_many_rendered_by_numpy_do(size: int) -> None:
    rng = random.Random(size)
    year_1000, year_10000 = -30_610_224_000_000_000, 253_402_300_800_000_000
    for _ in range(300):
        values: list[int | None] = [
            rng.choice(
                [rng.randrange(year_1000, year_10000), rng.randrange(-(10**15), 10**15) // 1000 * 1000, None]
            )
            for _ in range(size)
        ]
        timestamps._cache.clear()
        assert iso_list(values) == [None if v is None else reference(v) for v in values]
    timestamps._cache.clear()
    assert iso_list([year_1000 - 1, year_10000]) == ["0999-12-31T23:59:59.999999Z", "10000-01-01T00:00:00Z"]


def test_nulls_stay_null_and_an_empty_list_is_empty() -> None:
    assert iso_list([None, None]) == [None, None]
    assert iso_list([]) == []


def test_a_full_cache_is_emptied_and_still_renders_right(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timestamps, "_MAX_CACHED", 8)
    values = [1_700_000_000_000_000 + i * 1_000_001 for i in range(20)]
    for start in range(0, 20, 5):
        chunk = values[start : start + 5]
        assert iso_list(chunk) == [reference(v) for v in chunk]
        assert len(timestamps._cache) <= 8


def test_years_before_1000_have_four_digits() -> None:
    assert iso_utc(-58_000_000_000_000_000) == "0132-01-20T16:53:20Z"  # datetime agrees


def test_the_smallest_int64_is_an_instant_not_numpys_not_a_time() -> None:
    smallest = -(2**63)
    assert iso_list([smallest, 0]) == [reference(smallest), "1970-01-01T00:00:00Z"]
    assert "NaT" not in iso_utc(smallest)


def test_the_smallest_int64_beside_other_values_leaves_their_rendering_alone() -> None:
    """Only the smallest int64 takes strftime's path: a year below 1000 beside it keeps
    its four digits, as it has alone."""
    smallest, early = -(2**63), -58_000_000_000_000_000
    assert iso_list([smallest, early, None, 1]) == [
        reference(smallest),
        "0132-01-20T16:53:20Z",
        None,
        reference(1),
    ]
    timestamps._cache.clear()
    assert iso_list([early, smallest]) == [*iso_list([early]), reference(smallest)]


YEAR_1 = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z, the first instant orjson writes


@pytest.mark.parametrize("whole", [False, True], ids=["any-microsecond", "whole-seconds"])
def test_a_column_as_json_is_iso_list_as_json_across_every_year_orjson_writes(whole: bool) -> None:
    rng = random.Random(11)
    last = 253_402_300_799_000_000  # 9999-12-31T23:59:59Z
    for _ in range(300):
        values = [rng.randrange(YEAR_1, last) for _ in range(100)]
        if whole:
            values = [v // 1_000_000 * 1_000_000 for v in values]
        timestamps._cache.clear()
        assert timestamps.iso_json(values) == orjson.dumps(iso_list(values))


@pytest.mark.parametrize(
    "odd",
    [
        None,  # a row without a value
        -(2**63),  # the smallest int64: numpy's NaT
        253_402_300_800_000_000,  # year 10000
        253_402_300_799_999_999,  # the last µs of 9999 (orjson refuses after 9999-12-30T22:00:00Z)
        YEAR_1 - 1,  # year 0 (orjson >= 3.11.8 writes it, as iso_list does)
        -62_200_000_000_000_000,  # year -2 (orjson 3.11.7 wrote it garbled)
        -265_756_606_373_840_758,  # year -6452 (orjson 3.11.7 died of an illegal instruction)
        -(2**62),
        2**63 - 1,
    ],
)
def test_a_column_orjson_cannot_write_from_integers_is_rendered_as_iso_list(odd: int | None) -> None:
    values = [1_704_067_207_000_000, odd, -58_000_000_000_000_000, 1]
    expected = orjson.dumps(iso_list(values))
    timestamps._cache.clear()
    assert timestamps.iso_json(values) == expected
    assert orjson.loads(expected)[2] == "0132-01-20T16:53:20Z"


def test_an_empty_column_is_an_empty_array() -> None:
    assert timestamps.iso_json([]) == b"[]"


YEAR_0 = -62_167_219_200_000_000  # 0000-01-01T00:00:00Z, the first instant orjson >= 3.11.8 writes
LAST_WRITTEN = 253_402_207_200_000_000  # 9999-12-30T22:00:00Z, the last (jiff's Timestamp::MAX)


def test_every_instant_the_installed_orjson_writes_from_integers_it_writes_as_iso_list_does() -> None:
    """iso_json hands orjson any column without a None (orjson >= 3.11.8 refuses what it
    cannot write): across the whole int64 range, and densely at both ends of what it
    writes, what it accepts must be iso_list's."""
    if timestamps._CHECK_YEARS:  # (handing it these would crash the process: 3.11.7)
        pytest.fail(f"orjson {orjson.__version__} is older than the pin (3.11.8)")
    rng = random.Random(5)
    edges = [-(2**63), -(2**63) + 1, YEAR_0 - 1, YEAR_0, YEAR_1 - 1, YEAR_1, -1, 0, 1]
    edges += [LAST_WRITTEN, LAST_WRITTEN + 1, 253_402_300_799_999_999, 253_402_300_800_000_000, 2**63 - 1]
    dense = [end + d for end in (YEAR_0, LAST_WRITTEN) for d in range(-3_000, 3_000)]
    days = [
        end + rng.randint(-86_400_000_000 * 3, 86_400_000_000 * 3)
        for end in (YEAR_0, LAST_WRITTEN)
        for _ in range(2_000)
    ]
    ranges = [(-(2**63), 2**63 - 1), (-70_000_000_000_000_000, 260_000_000_000_000_000)]
    values = edges + dense + days + [rng.randint(lo, hi) for lo, hi in ranges for _ in range(20_000)]
    written_by_orjson = []
    for v in values:
        try:
            written = orjson.dumps(
                np.array([v], np.int64).view("datetime64[us]"), option=timestamps._DATETIME64
            )
        except TypeError:
            continue
        assert written == orjson.dumps(iso_list([v])), v
        written_by_orjson.append(v)
    assert {YEAR_0, LAST_WRITTEN} <= set(written_by_orjson)
    assert not {YEAR_0 - 1, LAST_WRITTEN + 1} & set(written_by_orjson)
    assert timestamps.iso_json(values) == orjson.dumps(iso_list(values))  # (some refused: iso_list)


def test_a_column_orjson_writes_whole_does_not_go_through_iso_list(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(6)
    values = [YEAR_0, LAST_WRITTEN] + [rng.randint(YEAR_0, LAST_WRITTEN) for _ in range(98)]
    expected = orjson.dumps(iso_list(values))

    def refused(values: object) -> list[str | None]:
        raise AssertionError("iso_list called")

    monkeypatch.setattr(timestamps, "iso_list", refused)
    assert timestamps.iso_json(values) == expected


def test_a_column_with_a_null_is_rendered_as_iso_list_renders_it() -> None:
    values = [1_704_067_207_000_000] * 50 + [None] + [1_704_067_207_000_001] * 49
    assert timestamps.iso_json(values) == orjson.dumps(iso_list(values))
    assert orjson.loads(timestamps.iso_json(values))[50] is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3.11.8", (3, 11, 8)), ("3.13.0", (3, 13, 0)), ("3.12.0rc1", (3, 12)), ("4", (4,))],
)
def test_a_version_string_reads_as_its_numbers(text: str, expected: tuple[int, ...]) -> None:
    assert timestamps.version(text) == expected


def test_the_installed_orjson_is_trusted_to_refuse_what_it_cannot_write() -> None:
    """pyproject.toml pins orjson >= 3.11.8: the years check is for an older one only."""
    assert timestamps.version(orjson.__version__) >= (3, 11, 8)
    assert timestamps._CHECK_YEARS is False


@pytest.mark.parametrize(
    ("text", "checked"),
    [
        ("3.11.7", True),
        ("3.11.8rc1", True),
        ("3.10.0", True),
        ("3.11.8", False),
        ("3.11.10", False),
        ("4.0", False),
    ],
)
def test_only_an_orjson_older_than_3_11_8_is_kept_to_years_1_to_9999(text: str, checked: bool) -> None:
    assert timestamps.needs_years_check(text) is checked


def test_with_an_orjson_older_than_the_pin_instants_outside_years_1_to_9999_never_reach_its_datetime64_writer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """orjson 3.11.7 wrote years below 1 garbled or crashed the process: an orjson older
    than 3.11.8 is handed only instants it writes as iso_list does."""
    monkeypatch.setattr(timestamps, "_CHECK_YEARS", True)
    handed: list[object] = []
    real = orjson.dumps

    def dumps(obj: object, *args: object, **kwargs: object) -> bytes:
        handed.append(obj)
        return real(obj, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(orjson, "dumps", dumps)
    for odd in (YEAR_1 - 1, -62_200_000_000_000_000, -(2**62), 253_402_300_800_000_000):
        handed.clear()
        timestamps.iso_json([1_704_067_207_000_000, odd] * 4)
        assert all(isinstance(h, list) for h in handed), odd  # the strings of iso_list, not numpy
    handed.clear()
    timestamps.iso_json([1_704_067_207_000_000, YEAR_1] * 4)
    assert any(not isinstance(h, list) for h in handed)  # in range: the datetime64 view
