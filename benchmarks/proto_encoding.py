"""The gRPC Join response's encoder (``proto_wire.encode_join``) on real join results of
the demo: as it serves (a value list encoded as having no null, its encoder refusing a
null if there is one) against the same encoder scanning every list for a null first
(``None in values``, the code before), with the JSON encoding of the same results beside
them (what HTTP's answer costs; issue 16 expects binary columns to win at batch 100).

Results as ``benchmarks.json_encoding`` draws them (ranker_v1, ranker_v2, the derived
view's inputs plus its four features; batch 1, 10, 100; 64 key draws each). The two
protobuf encodings must be byte-identical, or the run fails. Alternating, best of
``--repeat`` timings of ``--number`` encodes of all 64 results.

    python -m benchmarks.proto_encoding [--number 200] [--repeat 7]

Writes benchmarks/results/proto-encoding.md (stitched into RESULTS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import google.protobuf

from benchmarks import report
from benchmarks.json_encoding import HERE, results, timed
from benchmarks.run import log
from featurestore.api import json_codec, proto_codec, proto_wire
from featurestore.demo.data import ensure_demo_data
from featurestore.join import JoinResult


@contextmanager
def scanning_first() -> Iterator[None]:
    """proto_wire with no encoder trusted to refuse a null: every list scanned first."""
    saved = proto_wire._BY_ID
    proto_wire._BY_ID = {k: (tag, encode, False) for k, (tag, encode, _) in saved.items()}
    try:
        yield
    finally:
        proto_wire._BY_ID = saved


def measure(batch_results: list[JoinResult], number: int, repeat: int) -> dict[str, Any]:
    def proto_all() -> list[bytes]:
        return [proto_codec.encode_join(r, "0" * 32) for r in batch_results]

    def json_all() -> list[bytes]:
        return [json_codec.encode_join(r, "0" * 32) for r in batch_results]

    served = proto_all()
    with scanning_first():
        if proto_all() != served:
            raise AssertionError("the two protobuf encodings of a join result differ")
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
        "### The gRPC Join response's encoding: protobuf against JSON",
        "",
        f"* Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; command: `{command}`; "
        f"protobuf {google.protobuf.__version__}",
        "* Real join results of the demo (memory stores), 64 key draws per row (as `benchmarks.json_encoding`);",
        "  `proto_wire.encode_join` as it serves, and scanning every value list for a null first (the code",
        "  before: `None in values`), byte-identical (the run checks it); `json_codec.encode_join` (HTTP's",
        "  answer) on the same results; alternating, best of the repeats.",
        "",
        "| request | batch | protobuf bytes | JSON bytes | protobuf, scan first µs | protobuf µs | JSON µs |",
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
    rows = {}
    for key, batch_results in joined.items():
        r = rows[key] = measure(batch_results, a.number, a.repeat)
        log(f"proto {key}: scan first {r['scan_us']:.1f} us, served {r['served_us']:.1f}, json {r['json_us']:.1f}")
    report.publish(
        "proto-encoding.md",
        render(rows, f"python -m benchmarks.proto_encoding --number {a.number} --repeat {a.repeat}"),
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--number", type=int, default=200, help="encodes of all draws per timing")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--out", type=Path, default=HERE / "out")
    main(ap.parse_args())
