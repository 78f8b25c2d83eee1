"""ClickHouse point reads: 100 uncached random keys against a 1M-row online table.

Part 1 compares table designs for "latest row per key" point reads on the real engine
(chdb, in-process): EmbeddedRocksDB (what featurestore creates), MergeTree ordered by
key with index_granularity 8192 and 256, ReplacingMergeTree + FINAL, and argMax GROUP BY.
Part 2 measures the adapter the server uses (``ClickHouseOnlineSource.read``: thread pool,
server-side key parameter, row alignment), uncached and with the LRU cache in front.

    python -m benchmarks.clickhouse_point_reads [--rows 1000000] [--queries 300]

Writes benchmarks/results/clickhouse.md (stitched into RESULTS.md by benchmarks.report).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import clickhouse_connect

from benchmarks.provenance import run_line, started
from benchmarks.report import stitch
from featurestore.cache import CachedSource, LRUCache
from featurestore.model import DType, Entity, Feature, FeatureView
from featurestore.sources.base import ViewQuery, ViewRead
from featurestore.sources.clickhouse import ClickHouseOnlineSource, ClickHouseOptions, table_name

HERE = Path(__file__).resolve().parent
VIEW = FeatureView(
    "tx",
    (Entity("user_id", DType.INT64),),
    (
        Feature("txn_count_90d", DType.INT64),
        Feature("avg_basket_90d", DType.FLOAT64),
        Feature("chargeback_rate_365d", DType.FLOAT64),
        Feature("top_category", DType.STRING),
    ),
)
COLUMNS = "txn_count_90d Nullable(Int64), avg_basket_90d Nullable(Float64), chargeback_rate_365d Nullable(Float64), top_category Nullable(String)"
FILL = (
    "SELECT number AS k, number % 97, number / 7, (number % 1000) / 1000, toString(number % 8), "
    "toDateTime64('2024-01-01 00:00:00', 6, 'UTC') + number FROM numbers({rows})"
)
DESIGNS = {
    "EmbeddedRocksDB, PRIMARY KEY key (featurestore's choice)": (
        "ENGINE = EmbeddedRocksDB PRIMARY KEY k",
        "SELECT k, txn_count_90d, avg_basket_90d, chargeback_rate_365d, top_category FROM {t} WHERE k IN {{keys:Array(Int64)}}",
    ),
    "MergeTree ORDER BY key, index_granularity 8192 (default)": (
        "ENGINE = MergeTree ORDER BY k",
        "SELECT k, txn_count_90d, avg_basket_90d, chargeback_rate_365d, top_category FROM {t} WHERE k IN {{keys:Array(Int64)}}",
    ),
    "MergeTree ORDER BY key, index_granularity 256": (
        "ENGINE = MergeTree ORDER BY k SETTINGS index_granularity = 256",
        "SELECT k, txn_count_90d, avg_basket_90d, chargeback_rate_365d, top_category FROM {t} WHERE k IN {{keys:Array(Int64)}}",
    ),
    "ReplacingMergeTree(ts) + FINAL, granularity 256": (
        "ENGINE = ReplacingMergeTree(ts) ORDER BY k SETTINGS index_granularity = 256",
        "SELECT k, txn_count_90d, avg_basket_90d, chargeback_rate_365d, top_category FROM {t} FINAL WHERE k IN {{keys:Array(Int64)}}",
    ),
    "argMax GROUP BY over MergeTree, granularity 256": (
        "ENGINE = MergeTree ORDER BY k SETTINGS index_granularity = 256",
        "SELECT k, argMax(txn_count_90d, ts), argMax(avg_basket_90d, ts), argMax(chargeback_rate_365d, ts), "
        "argMax(top_category, ts) FROM {t} WHERE k IN {{keys:Array(Int64)}} GROUP BY k",
    ),
}


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(int(q * len(s)), len(s) - 1)] * 1000


def table_designs(client: Any, rows: int, queries: int) -> list[tuple[str, float, float]]:
    client.command("CREATE DATABASE IF NOT EXISTS pointreads")
    out = []
    for i, (name, (engine, sql)) in enumerate(DESIGNS.items()):
        t = f"pointreads.t{i}"
        client.command(f"DROP TABLE IF EXISTS {t}")
        client.command(f"CREATE TABLE {t} (k Int64, {COLUMNS}, ts DateTime64(6, 'UTC')) {engine}")
        client.command(f"INSERT INTO {t} {FILL.format(rows=rows)}")
        if "Replacing" in name or "argMax" in name:  # 10% of keys get a newer second row
            client.command(f"INSERT INTO {t} {FILL.format(rows=rows)} WHERE k % 10 = 0")
        q = sql.format(t=t)
        rnd = random.Random(i)
        lat = []
        for _ in range(queries):
            keys = [rnd.randrange(rows) for _ in range(100)]
            t0 = time.perf_counter()
            got = client.query(q, parameters={"keys": keys}).result_rows
            lat.append(time.perf_counter() - t0)
            assert len(got) == len(set(keys))
        out.append((name, pct(lat, 0.5), pct(lat, 0.99)))
        client.command(f"DROP TABLE {t}")
    return out


async def adapter(dsn: str, rows: int, queries: int) -> dict[str, tuple[float, float]]:
    src = ClickHouseOnlineSource("bench", "bench", ClickHouseOptions(dsn=dsn, threads=4))
    await src.start()
    await src.prepare([VIEW])
    table = f"featurestore.{table_name('bench', 'tx', 1)}"
    await src.drop_version(VIEW, 1)
    await src.pool.run(
        lambda c: c.command(f"CREATE TABLE {table} AS featurestore.{table_name('bench', 'tx', 0)}")
    )
    await src.pool.run(lambda c: c.command(f"INSERT INTO {table} {FILL.format(rows=rows)}"))
    cached = CachedSource(src, LRUCache(200_000, 30))
    for start in range(0, 5_000, 500):  # fill the cache with the hot set
        await cached.read([ViewQuery(VIEW, list(range(start, start + 500)), [0, 1, 2, 3], 1)])
    results = {}
    rnd = random.Random(1)
    for label, store, key_space in (
        ("ClickHouseOnlineSource.read, 100 uncached random keys", src, rows),
        ("cached path: LRU cache in front, 100 keys from a cached hot set of 5,000", cached, 5_000),
    ):
        lat = []
        for i in range(queries + 50):
            keys = list({rnd.randrange(key_space) for _ in range(100)})
            t0 = time.perf_counter()
            [res] = await store.read([ViewQuery(VIEW, keys, [0, 1, 2, 3], 1)])
            if i >= 50:  # warm-up (and, for the cache, filling it)
                lat.append(time.perf_counter() - t0)
            assert isinstance(res, ViewRead) and all(res.found)
        results[label] = (pct(lat, 0.5), pct(lat, 0.99))
    await src.close()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--dsn", help="chdb://DIR (default: a temp dir) or http://host:8123")
    a = ap.parse_args()
    start = started()
    dsn = a.dsn or f"chdb://{tempfile.mkdtemp(prefix='fs-chbench-')}"
    client = clickhouse_connect.get_client(dsn=ClickHouseOptions(dsn=dsn).client_dsn)
    version = client.command("SELECT version()")
    designs = table_designs(client, a.rows, a.queries)
    paths = asyncio.run(adapter(dsn, a.rows, a.queries))
    lines = [
        "## ClickHouse point reads (100 keys, 1M-row table)",
        "",
        run_line(start),
        "",
        f"`python -m benchmarks.clickhouse_point_reads --rows {a.rows} --queries {a.queries}`; ClickHouse {version} "
        f"({'in-process chdb' if dsn.startswith('chdb://') else dsn}), clickhouse-connect, keys as a server-side "
        "`Array(Int64)` parameter, 4 numeric/string feature columns. Target: <= 10 ms p50 for 100 uncached keys.",
        "",
        "| online table design | p50 | p99 |",
        "|---|---:|---:|",
        *(f"| {name} | {p50:.2f} ms | {p99:.2f} ms |" for name, p50, p99 in designs),
        "",
        "| featurestore read path | p50 | p99 |",
        "|---|---:|---:|",
        *(f"| {name} | {p50:.2f} ms | {p99:.2f} ms |" for name, (p50, p99) in paths.items()),
        "",
    ]
    out = HERE / "results" / "clickhouse.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    stitch()


if __name__ == "__main__":
    main()
