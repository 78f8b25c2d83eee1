"""Data commands: materialize, ddl."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from featurestore.cli.base import Subcommands
from featurestore.cli.registry import _admin


def register(sub: Subcommands) -> None:
    m = sub.add_parser("materialize", help="load a view into its online store as a new data version")
    m.add_argument("--view", required=True)
    m.add_argument(
        "--source",
        required=True,
        help="a Parquet file, or clickhouse://db.table, with the view's keys, features and timestamp",
    )
    m.add_argument(
        "--clickhouse-dsn", help="where clickhouse:// sources live (default: the config's clickhouse store)"
    )
    m.add_argument("--config", help="server config naming the registry and stores")
    m.add_argument("--definitions", help="apply these definitions first if they differ from current")
    m.add_argument("--batch-rows", type=int, default=50_000)
    m.add_argument(
        "--grace-seconds", type=int, default=600, help="how long the previous data version lives on"
    )
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(func=cmd_materialize)

    dd = sub.add_parser("ddl", help="print the ClickHouse DDL of the online tables the server uses")
    dd.add_argument("--config", help="server config naming the registry and stores")
    dd.set_defaults(func=cmd_ddl)


def cmd_materialize(args: argparse.Namespace, _argv: list[str]) -> int:
    import time

    from featurestore import jobs
    from featurestore.config import load_config
    from featurestore.materialize import Progress
    from featurestore.offline import open_source

    overrides: dict[tuple[str, ...], Any] = {("registry", "definitions"): args.definitions}
    config = load_config(args.config, overrides)
    last = [0.0]

    def progress(p: Progress) -> None:
        if args.quiet or time.monotonic() - last[0] < 0.5:
            return
        last[0] = time.monotonic()
        total = f"/{p.total:,}" if p.total else ""
        eta = f", ETA {p.eta_seconds:.0f}s" if p.eta_seconds is not None else ""
        print(
            f"\r{args.view}: {p.rows:,}{total} rows, {p.rate:,.0f} rows/s{eta}   ",
            end="",
            file=sys.stderr,
            flush=True,
        )

    async def run() -> Any:
        await jobs.apply_configured_definitions(config)
        dsn = args.clickhouse_dsn or next(
            (str(sc.options.get("dsn", "")) for sc in config.stores.values() if sc.kind == "clickhouse"), None
        )
        return await jobs.materialize(
            config,
            args.view,
            open_source(args.source, dsn),
            batch_rows=args.batch_rows,
            grace_seconds=args.grace_seconds,
            on_progress=progress,
        )

    r = asyncio.run(run())
    if not args.quiet:
        print(file=sys.stderr)
    print(
        f"{r.view}: published data version {r.data_version} (was {r.previous_version}): "
        f"{r.rows_written:,} rows written from {r.rows_read:,} read in {r.seconds:.1f}s "
        f"({r.rows_read / max(r.seconds, 1e-9):,.0f} rows/s)"
        + (f"; version {r.previous_version} expires in {args.grace_seconds}s" if r.previous_version else "")
    )
    return 0


def cmd_ddl(args: argparse.Namespace, _argv: list[str]) -> int:
    from featurestore.config import load_config
    from featurestore.sources.clickhouse import ClickHouseOptions, online_table_ddl

    config = load_config(args.config)
    snapshot, versions = _admin(args, lambda a: _snapshot_and_versions(a.registry))
    if snapshot is None:
        print("the registry has no snapshot", file=sys.stderr)
        return 1
    printed = 0
    for view in sorted(snapshot.definitions.views.values(), key=lambda v: v.name):
        store = config.stores.get(view.online_store)
        if store is None or store.kind != "clickhouse":
            continue
        database = ClickHouseOptions.from_mapping(dict(store.options)).database
        print(f"-- {view.name}: store {view.online_store}, data version {versions.get(view.name, 0)}")
        print(online_table_ddl(database, config.project, view, versions.get(view.name, 0)) + ";\n")
        printed += 1
    if not printed:
        print("-- no view of the current snapshot is served from a clickhouse store")
    return 0


async def _snapshot_and_versions(registry: Any) -> tuple[Any, dict[str, int]]:
    return await registry.current(), await registry.data_versions()
