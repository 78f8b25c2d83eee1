"""Event timestamps as the JSON API writes them: epoch µs -> ``2024-01-01T00:00:07Z``,
with ``.ffffff`` only when the instant is not a whole second; years below 1000 are
zero-padded to four digits (RFC 3339), years past 9999 have more.

A response renders one timestamp per row per view, so this is on the hot path of every
join. Rendered strings are kept in a bounded cache (a view's rows often share
timestamps: a batch materialized at one instant); the values the cache does not hold
are rendered together by numpy, or one by one when they are few. One at a time,
``time.strftime`` costs ~0.9-1.3 µs a value (by the day's machine); numpy renders 100 in
25 µs and a cache hit costs 0.07 µs. The cache alone was a cliff: data with more distinct
timestamps than it holds (131,072) paid the strftime on nearly every value, 130 µs per
view at batch 100 (benchmarks/RESULTS.md, issue 16).

A whole column as a JSON array (``iso_json``, what the join response splices in from 8
rows on) is rendered by orjson from a ``datetime64[us]`` view of the values, in C, when
it holds no null and orjson writes every instant in it (0000-01-01 to
9999-12-30T22:00:00Z, exactly as ``iso_list``: tests/unit/test_timestamps.py compares
the two at both ends); otherwise as ``iso_list``: no per-value Python work and no cache.
The cache is a 131,072-entry dict, and a lookup in it costs
what a cache miss of the CPU costs: py-spy on a batch-100 server (cache off, the demo's
two views, 200 timestamps a response) put 16.7% of its CPU in the lookups, ~450 ns each
against ~140 ns in a loop of lookups alone. Rendered by orjson instead, the server's CPU
per request fell 15.6% at batch 100 (468 -> 395 µs, QPS +18.4%) and 8.3% at batch 10
(192 -> 176 µs): ``python -m benchmarks.ab --old 471934a --batch 100`` (and ``--batch
10``), one Redis, cache off, 4 interleaved rounds, 2026-12-04.

Until 2026-12-06 a check came before orjson: a scan for None and two numpy reductions
for years 1-9999, 4 of the 9.4 µs ``iso_json`` took for 100 values, and ~15 µs a view in
a server (why three times timeit's figure was not traced). Without it a join's CPU fell
5.6% at batch 100 and 7.3% at 10, request-interleaved over Redis (``python -m
benchmarks.iso_json_check``, benchmarks/results/iso-json-check.md, 2026-12-06). orjson from 3.11.8
(the pin in pyproject.toml) refuses an instant it cannot write as ``iso_list`` does
(before year 0, after 9999-12-30T22:00:00Z, NaT) with a TypeError, and a None fails the
int64 conversion the same way: both go to ``iso_list`` (5.5 µs for 100 values; a column
with a None: 10.0 against 8.9). An orjson older than the pin gets the check back
(``needs_years_check``): 3.11.7 wrote year -1 garbled and died of an illegal instruction
further back.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import orjson

_MAX_CACHED = 1 << 17
_cache: dict[int, str] = {}
_US_PER_S = 1_000_000
_NAT = -(2**63)  # int64's minimum is datetime64's NaT; push accepts it as a timestamp


def _one(us: int) -> str:
    """One instant by the standard library (years before 1000 are not zero-padded here)."""
    secs, frac = divmod(us, _US_PER_S)
    s = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    return f"{s}.{frac:06d}Z" if frac else f"{s}Z"


def iso_utc(us: int) -> str:
    """One epoch-µs instant as RFC 3339 UTC."""
    return iso_list([us])[0]  # type: ignore[return-value]


def iso_list(values: Sequence[int | None]) -> list[str | None]:
    """Each epoch-µs instant as RFC 3339 UTC; None stays None."""
    get = _cache.get
    out: list[str | None] = [get(v) for v in values]  # type: ignore[arg-type]  # get(None) is None
    if None in out:
        misses = [i for i, (s, v) in enumerate(zip(out, values, strict=True)) if s is None and v is not None]
        if misses:
            _render(values, misses, out)
    return out


_DATETIME64 = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z
_INT64, _MICROSECONDS = np.dtype(np.int64), np.dtype("datetime64[us]")  # (a dtype by name: 0.3 µs)
_YEAR_1 = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
_YEAR_1000 = -30_610_224_000_000_000  # 1000-01-01T00:00:00Z
_YEAR_10000 = 253_402_300_800_000_000  # 10000-01-01T00:00:00Z


def version(text: str) -> tuple[int, ...]:
    """``"3.11.8"`` -> ``(3, 11, 8)``; a part that is not a number ends it (``"3.12.0rc1"``
    -> ``(3, 12)``)."""
    parts: list[int] = []
    for part in text.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def needs_years_check(orjson_version: str) -> bool:
    """Whether an orjson must be kept to years 1-9999: 3.11.7 wrote instants before year 0
    garbled, or died of an illegal instruction; 3.11.8 refuses them (``"3.11.8rc1"`` reads
    as 3.11, older)."""
    return version(orjson_version) < (3, 11, 8)


_CHECK_YEARS = needs_years_check(orjson.__version__)


def iso_json(values: Sequence[int | None]) -> bytes:
    """``orjson.dumps(iso_list(values))``, rendered from the integers by orjson where it
    writes them as ``iso_list`` does (module docstring): a column holding a None, or an
    instant orjson refuses, as ``iso_list``."""
    if values:
        try:
            us = np.fromiter(values, _INT64, len(values))  # TypeError at a None (past int64: raises)
            if _CHECK_YEARS and not (us.min() >= _YEAR_1 and us.max() < _YEAR_10000):
                raise TypeError("outside years 1-9999")
            return orjson.dumps(us.view(_MICROSECONDS), option=_DATETIME64)
        except TypeError:  # (orjson's refusal is one: JSONEncodeError)
            pass
    return orjson.dumps(iso_list(values))


# A few misses are rendered one by one (strftime, ~0.9-1.0 µs each) rather than by numpy,
# whose set-up alone is ~6 µs (``iso_list`` of one uncached value: 2.3-2.5 against 7.1-7.5
# µs): a batch-1 join whose view's timestamp is not cached (data of many distinct
# instants) paid numpy's set-up per view.
# strftime writes years 1000-9999 as RFC 3339 does; others go to numpy.
_FEW = 8


def _render(values: Sequence[int | None], misses: list[int], out: list[str | None]) -> None:
    if len(misses) < _FEW and all(_YEAR_1000 <= values[i] < _YEAR_10000 for i in misses):  # type: ignore[operator]
        if len(_cache) + len(misses) > _MAX_CACHED:
            _cache.clear()
        for i in misses:
            out[i] = _cache[values[i]] = _one(values[i])  # type: ignore[arg-type,index]
        return
    if _NAT in (values[i] for i in misses):  # numpy's "not a time": render it the slow way
        for i in misses:
            if values[i] == _NAT:
                out[i] = _one(_NAT)
        misses = [i for i in misses if values[i] != _NAT]  # the rest as always (4-digit years)
        if not misses:
            return
    us = np.fromiter((values[i] for i in misses), dtype=np.int64, count=len(misses))
    at = us.astype("datetime64[us]")
    fraction = us % _US_PER_S != 0  # numpy's % is floor-mod: -1 µs is .999999 of a second
    whole = np.datetime_as_string(at, unit="s", timezone="UTC")
    rendered: list[str] = whole.tolist()
    if fraction.any():
        exact = np.datetime_as_string(at, unit="us", timezone="UTC").tolist()
        rendered = [e if f else w for w, e, f in zip(rendered, exact, fraction.tolist(), strict=True)]
    if len(_cache) + len(misses) > _MAX_CACHED:
        _cache.clear()
    for i, s in zip(misses, rendered, strict=True):
        out[i] = _cache[values[i]] = s  # type: ignore[index]
