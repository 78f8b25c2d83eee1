"""The gRPC Join response's encoder (``proto_wire.encode_join``) on real join results of
the demo: as it serves (a value list encoded as having no null, its encoder refusing one
if there is: a view's rows not PRESENT first written as their dtype's null value) against
it with no encoder trusted to refuse a null, as before 0b88d59: every value list of a view
whose rows are all PRESENT, and each view's event timestamps, scanned for a null first
(``None in values``), a view with a row not PRESENT written with its null rows listed
value by value (unscanned: the code before scanned it too, a scan stopping at its first
null, ~0.1 µs a column with a tenth of the rows unknown); with the JSON encoding of
the same results beside them (what HTTP's answer costs; issue 16 expects binary columns
to win at batch 100).

Results as ``benchmarks.json_encoding`` draws them (ranker_v1, ranker_v2, the derived
view's inputs plus its four features; batch 1, 10, 100; 64 key draws each), and ranker_v1
with a tenth of its users unknown (NOT_FOUND rows: nulls in every column of both views).
The two protobuf encodings must be byte-identical, and the "before" arm must scan, or the
run fails. Alternating, best of ``--repeat`` timings of ``--number`` encodes of all 64
results.

    python -m benchmarks.proto_encoding [--number 200] [--repeat 7]

Writes benchmarks/results/proto-encoding.md (stitched into RESULTS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import google.protobuf

from benchmarks import report
from benchmarks.json_encoding import REQUESTS, arguments, results, timed
from benchmarks.run import log
from featurestore.api import json_codec, proto_codec, proto_wire
from featurestore.demo.data import ensure_demo_data
from featurestore.join import JoinResult
from featurestore.outcomes import ViewOutcome

UNKNOWN = 0.1
UNKNOWN_LABEL = "ranker_v1, a tenth of the users unknown"


def _outcome_fields_before(outcome: ViewOutcome) -> bytes:
    """``proto_wire._outcome_fields`` before 0b88d59: the timestamps scanned first."""
    n = len(outcome.statuses)
    if not n:
        return b""
    ts = outcome.event_ts_us
    statuses = proto_wire._STATUSES + proto_wire.varint(n) + bytes(outcome.statuses)
    return statuses + proto_wire._retag(proto_wire._EVENT_TS, proto_wire._int64s(ts, None in ts))


@contextmanager
def scanning_first() -> Iterator[None]:
    """proto_wire with no encoder trusted to refuse a null, as before 0b88d59 (the module
    docstring says where it differs)."""
    saved = proto_wire._BY_ID, proto_wire._outcome_fields
    proto_wire._BY_ID = {k: (tag, encode, False) for k, (tag, encode, _) in saved[0].items()}
    proto_wire._outcome_fields = _outcome_fields_before
    try:
        yield
    finally:
        proto_wire._BY_ID, proto_wire._outcome_fields = saved


class _Counting(list[Any]):
    """A value list counting the scans for a null made of it."""

    scans = 0

    def __contains__(self, value: object) -> bool:
        type(self).scans += 1
        return super().__contains__(value)


def check_the_before_arm_scans(result: JoinResult) -> None:
    """The "before" arm must scan a list of a view whose rows are all PRESENT, and the
    served one must not (else the two columns would time the same code, unseen)."""
    col = next(c for c in result.columns if c.outcome is not None and c.outcome.all_present)
    counted = result._replace(
        columns=[c._replace(values=_Counting(c.values)) if c is col else c for c in result.columns]
    )
    scans = []
    for arm in (nullcontext(), scanning_first()):
        _Counting.scans = 0
        with arm:
            proto_codec.encode_join(counted, "0" * 32)
        scans.append(_Counting.scans)
    if scans != [0, 1]:
        raise AssertionError(f"scans for a null (served, before): {scans}, expected [0, 1]")


def measure(batch_results: list[JoinResult], number: int, repeat: int) -> dict[str, Any]:
    def proto_all() -> list[bytes]:
        return [proto_codec.encode_join(r, "0" * 32) for r in batch_results]

    def json_all() -> list[bytes]:
        return [json_codec.encode_join(r, "0" * 32) for r in batch_results]

    served = proto_all()
    with scanning_first():
        if proto_all() != served:
            raise AssertionError("the protobuf encodings of a join result, as served and before, differ")
    served_s, scan_s, json_s = [], [], []
    for _ in range(repeat):  # alternate: drift hits all three
        served_s.append(timed(proto_all, number))
        with scanning_first():
            scan_s.append(timed(proto_all, number))
        json_s.append(timed(json_all, number))
    return {
        "served_us": min(served_s) * 1e6,
        "scan_us": min(scan_s) * 1e6,
        "json_us": min(json_s) * 1e6,
        "bytes": sum(map(len, served)) // len(served),
        "json_bytes": sum(map(len, json_all())) // len(served),
    }


def render(rows: dict[tuple[str, int], dict[str, Any]], command: str) -> list[str]:
    lines = [
        "## The gRPC Join response's encoding: protobuf against JSON (issue 16, requirement 4)",
        "",
        f"* Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; command: `{command}`; "
        f"protobuf {google.protobuf.__version__}",
        "* Real join results of the demo (memory stores), 64 key draws per row (as `benchmarks.json_encoding`;",
        f"  the last rows: ranker_v1 with {UNKNOWN:.0%} of the users past the demo's, NOT_FOUND); `proto_wire.encode_join`",
        "  as it serves, and with no encoder trusted to refuse a null, as before 0b88d59 (a list of a view whose rows",
        "  are all PRESENT and each view's timestamps scanned for a null first, `None in values`; a view with a row",
        "  not PRESENT written with its null rows listed value by value, unscanned: before, a scan stopping at its",
        "  first null, ~0.1 µs more a column), byte-identical (the run checks it, and that the before arm scans);",
        "  the demo has no stored nulls (one in a PRESENT row is not timed here);",
        "  `json_codec.encode_join` (HTTP's answer) on the same results; alternating, best of the repeats.",
        "",
        "| request | batch | protobuf bytes | JSON bytes | protobuf before µs | protobuf µs | JSON µs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (label, batch), r in rows.items():
        lines.append(
            f"| {label} | {batch} | {r['bytes']:,} | {r['json_bytes']:,} | {r['scan_us']:.1f} "
            f"| {r['served_us']:.1f} | {r['json_us']:.1f} |"
        )
    return lines


def main(a: argparse.Namespace) -> None:
    data = a.out / "data"
    ensure_demo_data(data)
    joined = asyncio.run(results(data))
    check_the_before_arm_scans(joined[(next(iter(REQUESTS)), 100)][0])
    unknown = asyncio.run(results(data, {UNKNOWN_LABEL: {"feature_service": "ranker_v1"}}, UNKNOWN))
    joined.update(unknown)
    rows = {}
    for key, batch_results in joined.items():
        r = rows[key] = measure(batch_results, a.number, a.repeat)
        log(
            f"proto {key}: scan first {r['scan_us']:.1f} us, served {r['served_us']:.1f}, json {r['json_us']:.1f}"
        )
    report.publish(
        "proto-encoding.md",
        render(rows, f"python -m benchmarks.proto_encoding --number {a.number} --repeat {a.repeat}"),
    )


if __name__ == "__main__":
    main(arguments(__doc__))
