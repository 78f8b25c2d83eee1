"""The join response's JSON encoder: orjson (what serves) against msgspec (what served
before, and still decodes requests), on real join results of the demo.

The demo's runtime (memory stores, ``featurestore serve --demo --no-clickhouse``) answers
ranker_v1 (16 stored features), ranker_v2 (the same plus the four derived ones) and the
three stored inputs of the derived view plus the four derived features, at batch 1, 10
and 100, 64 different key draws each; each result is then encoded by
``json_codec.encode_join`` as it serves (orjson, statuses and timestamps spliced as
``orjson.Fragment``; one row from fragments, ``json_row``), as one orjson document
(``json_codec.encode_document``: what one row took before ``json_row``) and with msgspec
swapped in (``msgspec.Raw`` splices, the code as it was; a derived feature's float64
array, served from 8 rows on, through msgspec's ``enc_hook`` as the list the join built
before), alternating, best of ``--repeat`` timings of ``--number`` encodes of all 64
results. The served bytes must equal the orjson document's, and parse to msgspec's
JSON, or the run fails.

    python -m benchmarks.json_encoding [--number 200] [--repeat 7]

Writes benchmarks/results/json-encoding.md (stitched into RESULTS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import timeit
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import orjson

from benchmarks import report
from benchmarks.derived import INPUTS, OURS
from benchmarks.derived_cpu import demo_runtime
from benchmarks.run import log
from featurestore.api import json_codec
from featurestore.demo.data import ensure_demo_data
from featurestore.join import JoinRequest, JoinResult

HERE = Path(__file__).resolve().parent
REQUESTS: dict[str, dict[str, Any]] = {
    "ranker_v1 (16 stored)": {"feature_service": "ranker_v1"},
    "ranker_v2 (16 stored + 4 derived)": {"feature_service": "ranker_v2"},
    "3 stored inputs + 4 derived": {"features": (*INPUTS, *OURS)},
}
DRAWS = 64


def _listed(obj: Any) -> Any:
    """msgspec's hook for what it cannot encode: a derived feature's float64 array (from
    8 rows on, NaN = null) as the list the join built before it served arrays."""
    if isinstance(obj, np.ndarray):
        return [None if v != v else v for v in obj.tolist()]
    raise NotImplementedError(type(obj))


@contextmanager
def msgspec_encoder() -> Iterator[None]:
    """encode_join with msgspec in orjson's place (its module-level encoder and splice)."""
    saved = json_codec.dumps, json_codec.Fragment
    encode = msgspec.json.Encoder(enc_hook=_listed).encode

    def dumps(doc: Any, option: int = 0) -> bytes:  # orjson's option (numpy arrays): the hook's job here
        return encode(doc)

    json_codec.dumps, json_codec.Fragment = dumps, msgspec.Raw  # type: ignore[assignment]
    try:
        yield
    finally:
        json_codec.dumps, json_codec.Fragment = saved


async def results(
    data: Path, requests: dict[str, dict[str, Any]] = REQUESTS, unknown: float = 0.0
) -> dict[tuple[str, int], list[JoinResult]]:
    """``DRAWS`` join results per request and batch; ``unknown``: the share of user ids
    drawn past the demo's 100,000 users (NOT_FOUND rows)."""
    _, rt = await demo_runtime(data)
    rnd = random.Random(4242)
    out: dict[tuple[str, int], list[JoinResult]] = {}
    try:
        for label, shape in requests.items():
            for batch in (1, 10, 100):
                got = out[(label, batch)] = []
                for _ in range(DRAWS):
                    ids = [rnd.randint(1, 100_000) for _ in range(batch)]
                    if unknown:
                        ids = [i + 100_000 if rnd.random() < unknown else i for i in ids]
                    prices = [round(rnd.random() * 150, 2) for _ in range(batch)]
                    req = JoinRequest({"user_id": ids}, request_data={"item_price": prices}, **shape)
                    got.append(await rt.engine.join(req, time.monotonic() + 5))
    finally:
        await rt.close()
    return out


def timed(encode: Callable[[], Any], number: int) -> float:
    """Seconds per result of ``number`` calls of ``encode`` (which encodes all draws once)."""
    return timeit.timeit(encode, number=number) / number / DRAWS


def measure(batch_results: list[JoinResult], number: int, repeat: int) -> dict[str, Any]:
    def served() -> list[bytes]:
        return [json_codec.encode_join(r, "0" * 32) for r in batch_results]

    def document() -> list[bytes]:
        return [json_codec.encode_document(r, "0" * 32) for r in batch_results]

    fast, whole = served(), document()
    if fast != whole:
        raise AssertionError("the served encoding is not the orjson document's bytes")
    with msgspec_encoder():
        slow = document()
    for a, b in zip(fast, slow, strict=True):
        if json.loads(a) != json.loads(b):
            raise AssertionError("orjson and msgspec encode a join result differently")
    one_row = batch_results[0].rows == 1  # (the served path is the document from 2 rows on)
    served_s: list[float] = []
    document_s: list[float] = []
    msgspec_s: list[float] = []
    for _ in range(repeat):  # alternate: drift hits all
        served_s.append(timed(served, number))
        if one_row:
            document_s.append(timed(document, number))
        with msgspec_encoder():
            msgspec_s.append(timed(document, number))
    return {
        "orjson_us": min(served_s) * 1e6,
        "document_us": min(document_s) * 1e6 if one_row else None,
        "msgspec_us": min(msgspec_s) * 1e6,
        "bytes": sum(map(len, fast)) // len(fast),
    }


def render(rows: dict[tuple[str, int], dict[str, Any]], command: str) -> list[str]:
    lines = [
        "### JSON encoding of the join response: orjson against msgspec",
        "",
        f"* Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; command: `{command}`; "
        f"orjson {orjson.__version__}, msgspec {msgspec.__version__}",
        "* Real join results of the demo (memory stores), 64 key draws per row; `json_codec.encode_join` as it",
        "  serves (orjson; one row from fragments, `json_row`), the orjson document (`encode_document`: one row",
        "  before `json_row`, the served path from 2 rows) and with msgspec swapped in (the encoder before),",
        "  alternating, best of the repeats; the served bytes equal the document's and parse to msgspec's JSON",
        "  (the run checks both).",
        "",
        "| request | batch | response bytes | msgspec µs | orjson document µs | served µs | served saves against msgspec | one row: fragments save |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (label, batch), r in rows.items():
        saved = r["msgspec_us"] - r["orjson_us"]
        doc = r.get("document_us")
        row_cell = (
            ""
            if doc is None
            else f"{doc - r['orjson_us']:.1f} µs ({100 * (doc - r['orjson_us']) / doc:.0f}%)"
        )
        lines.append(
            f"| {label} | {batch} | {r['bytes']:,} | {r['msgspec_us']:.1f} | "
            f"{r['orjson_us'] if doc is None else doc:.1f} | {r['orjson_us']:.1f} "
            f"| {saved:.1f} µs ({100 * saved / r['msgspec_us']:.0f}%) | {row_cell} |"
        )
    return lines


def main(a: argparse.Namespace) -> None:
    data = a.out / "data"
    ensure_demo_data(data)
    joined = asyncio.run(results(data))
    rows = {}
    for key, batch_results in joined.items():
        r = rows[key] = measure(batch_results, a.number, a.repeat)
        document = "" if r["document_us"] is None else f", the document {r['document_us']:.1f} us"
        log(f"json {key}: msgspec {r['msgspec_us']:.1f} us, served {r['orjson_us']:.1f} us{document}")
    report.publish(
        "json-encoding.md",
        render(rows, f"python -m benchmarks.json_encoding --number {a.number} --repeat {a.repeat}"),
    )


def arguments(doc: str | None) -> argparse.Namespace:
    """The command line of an encoding benchmark (this one, ``benchmarks.proto_encoding``)."""
    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    ap.add_argument("--number", type=int, default=200, help="encodes of all draws per timing")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--out", type=Path, default=HERE / "out")
    return ap.parse_args()


if __name__ == "__main__":
    main(arguments(__doc__))
