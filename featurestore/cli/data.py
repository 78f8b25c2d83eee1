"""Data commands: materialize, ddl."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from featurestore.cli.base import Subcommands
from featurestore.cli.registry import _admin
from featurestore.errors import FailedPrecondition, InvalidArgument


def register(sub: Subcommands) -> None:
    m = sub.add_parser(
        "materialize",
        help="load views from their batch sources into their online stores (a new data version each, "
        "or with --incremental the newer rows into the current one)",
    )
    which = m.add_mutually_exclusive_group(required=True)
    which.add_argument("--view", action="append", help="a feature view (repeat for several)")
    which.add_argument(
        "--all",
        action="store_true",
        help="every view of the current snapshot a run can load (stream views, views on memory stores "
        "and views without batch_source are skipped, one line each)",
    )
    m.add_argument(
        "--source",
        help="instead of the view's batch_source: a Parquet file or directory (hive partitions too), "
        "or clickhouse://db.table",
    )
    m.add_argument(
        "--clickhouse-dsn", help="where clickhouse:// sources live (default: the config's clickhouse store)"
    )
    m.add_argument("--start", help="only rows with event time >= this (ISO 8601; UTC unless it says)")
    m.add_argument("--end", help="only rows with event time < this (ISO 8601; UTC unless it says)")
    m.add_argument(
        "--incremental",
        action="store_true",
        help="only rows newer than the view's watermark, upserted into its current data version",
    )
    m.add_argument("--config", help="server config naming the registry and stores")
    m.add_argument("--definitions", help="apply these definitions first if they differ from current")
    m.add_argument(
        "--force",
        action="store_true",
        help="with --definitions: apply incompatible changes too (as `apply --force`)",
    )
    m.add_argument("--batch-rows", type=int, default=50_000)
    m.add_argument(
        "--grace-seconds", type=int, default=600, help="how long the previous data version lives on"
    )
    m.add_argument("--quiet", action="store_true", help="no progress")
    m.set_defaults(func=cmd_materialize)

    dd = sub.add_parser("ddl", help="print the ClickHouse DDL of the online tables the server uses")
    dd.add_argument("--config", help="server config naming the registry and stores")
    dd.set_defaults(func=cmd_ddl)


def cmd_materialize(args: argparse.Namespace, _argv: list[str]) -> int:
    from featurestore import jobs
    from featurestore.cli.progress import ProgressReporter
    from featurestore.config import load_config
    from featurestore.logconfig import configure_logging
    from featurestore.offline import EventTimeRange, open_source
    from featurestore.tls_files import check_lineage

    if args.batch_rows < 1:
        raise InvalidArgument(f"--batch-rows must be at least 1, got {args.batch_rows}")
    if args.grace_seconds < 0:
        raise InvalidArgument(f"--grace-seconds must be 0 or more, got {args.grace_seconds}")
    span = EventTimeRange(_epoch_us(args.start, "--start"), _epoch_us(args.end, "--end"))
    if span.start_us is not None and span.end_us is not None and span.start_us >= span.end_us:
        # no row can be in it: a full run would publish an empty version over the served one
        raise InvalidArgument(
            f"--start {args.start} must be before --end {args.end}: no event time is in that range"
        )
    overrides: dict[tuple[str, ...], Any] = {("registry", "definitions"): args.definitions}
    config = load_config(args.config, overrides, {("registry", "definitions"): "--definitions"})
    if args.force and not config.registry.definitions:
        raise InvalidArgument("--force applies definitions: give them with --definitions FILE")
    configure_logging(config.log_level, config.log_format)
    check_lineage(config.lineage, job=True)  # where its runs go (jobs.materialize's recorder)
    reporter = ProgressReporter(quiet=args.quiet)

    def done(result: Any) -> None:
        reporter.finish()  # a terminal's bar ends before the line
        print(_summary(result, args.grace_seconds), flush=True)

    stopped_by: list[signal.Signals] = []

    async def run() -> Any:
        stop = _cancel_on_signals(stopped_by)
        await jobs.apply_configured_definitions(config, force=args.force, force_flag="--force to materialize")
        source = None
        if args.source:
            source = open_source(args.source, jobs.warehouse(config, args.clickhouse_dsn))
        return await jobs.materialize(
            config,
            None if args.all else args.view,
            source,
            batch_rows=args.batch_rows,
            grace_seconds=args.grace_seconds,
            span=span,
            incremental=args.incremental,
            clickhouse_dsn=args.clickhouse_dsn,
            on_start=lambda view, src: reporter.start(view, src.describe()),
            on_skip=lambda view, why: print(f"{view}: skipped: {why}", flush=True),
            on_done=done,
            stop=stop,
        )

    try:
        asyncio.run(run())
    except asyncio.CancelledError:  # SIGTERM or SIGINT: the run was cancelled (_cancel_on_signals)
        sig = stopped_by[0] if stopped_by else signal.SIGTERM
        print(
            f"error: CANCELLED: stopped by {sig.name} (the view being loaded: a full run not yet published "
            "dropped its rows, one stopped while publishing finished as published; an incremental run's "
            "upserts stay, and its watermark moved only if its write had begun)",
            file=sys.stderr,
            flush=True,
        )
        return 128 + sig
    finally:
        reporter.finish()
    return 0


def _cancel_on_signals(received: list[signal.Signals]) -> asyncio.Event:
    """SIGTERM (``timeout``, ``docker stop``, a Kubernetes deadline) and SIGINT (Ctrl-C)
    cancel the run instead of killing the process: a run not yet published drops its
    rows, one published finishes the few seconds of cleanup that expire what it replaced
    (Materializer). A second signal cancels that too; SIGKILL leaves it to the next
    publication. The event returned is set with the cancel: the run checks it between
    batches, should the cancellation itself be lost (``Materializer``'s ``stop``).
    SIGINT takes this path rather than asyncio.run's own handler, a bare cancel of the
    task (lost in 1 Ctrl-C in 2, review s57). ``received`` gets the signals in order."""
    task = asyncio.current_task()
    assert task is not None
    stop = asyncio.Event()

    def terminate(sig: signal.Signals) -> None:
        received.append(sig)
        stop.set()
        task.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, terminate, sig)
    return stop


def _summary(r: Any, grace_seconds: int) -> str:
    from featurestore.api.timestamps import iso_utc

    mark = f"; watermark {iso_utc(r.watermark_us)}" if r.watermark_us is not None else ""
    # rows written a second: the progress bar's unit (a key's latest row each); read
    # counts the source's rows in the range, duplicates included
    rate = f"{r.rows_written / max(r.seconds, 1e-9):,.0f} rows/s"
    if r.incremental:
        return (
            f"{r.view}: incremental: {r.rows_written:,} rows upserted into data version {r.data_version} "
            f"from {r.rows_read:,} read in {r.seconds:.1f}s ({rate}){mark}"
        )
    return (
        f"{r.view}: published data version {r.data_version} (was {r.previous_version}): "
        f"{r.rows_written:,} rows written from {r.rows_read:,} read in {r.seconds:.1f}s ({rate}){mark}"
        + _expiring(r.expiring, grace_seconds)
    )


def _expiring(versions: tuple[int, ...], grace_seconds: int) -> str:
    if not versions:
        return ""
    if len(versions) == 1:
        return f"; version {versions[0]} expires in {grace_seconds}s"
    return f"; versions {', '.join(map(str, versions))} expire in {grace_seconds}s"


def _epoch_us(text: str | None, flag: str) -> int | None:
    """ISO 8601 date or date-time (UTC unless it names an offset) -> epoch µs."""
    if text is None:
        return None
    from datetime import UTC, datetime, timedelta

    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(
            f"{flag} {text!r}: expected an ISO 8601 date or time, e.g. 2024-05-01T10:00:00Z"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def cmd_ddl(args: argparse.Namespace, _argv: list[str]) -> int:
    from featurestore.config import load_config
    from featurestore.sources.clickhouse import ClickHouseOptions, online_table_ddl

    config = load_config(args.config)
    snapshot, versions = _admin(args, lambda a: _snapshot_and_versions(a.registry))
    if snapshot is None:
        raise FailedPrecondition("the registry is empty: run `featurestore apply FILE` first")
    printed = 0
    for view in sorted(snapshot.definitions.views.values(), key=lambda v: v.name):
        store = config.stores.get(view.online_store)
        if store is None or store.kind != "clickhouse":
            continue
        if view.stream is not None:  # its tiles live in memory or redis stores (factories.make_tile_store)
            print(
                f"-- {view.name}: store {view.online_store}: no table (a stream view: stream views are "
                "kept in memory or redis stores, not clickhouse)\n"
            )
            continue
        try:
            database = ClickHouseOptions.from_mapping(dict(store.options)).database
        except (TypeError, ValueError) as e:  # as jobs.warehouse and the server report it
            raise InvalidArgument(f"stores.{view.online_store}: {e}") from None
        print(f"-- {view.name}: store {view.online_store}, data version {versions.get(view.name, 0)}")
        print(online_table_ddl(database, config.project, view, versions.get(view.name, 0)) + ";\n")
        printed += 1
    if not printed:
        print("-- no view of the current snapshot is served from a clickhouse store")
    return 0


async def _snapshot_and_versions(registry: Any) -> tuple[Any, dict[str, int]]:
    return await registry.current(), await registry.data_versions()
