"""``featurestore`` command line: the parser; each command lives in its own module."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from featurestore.cli.data import cmd_ddl, cmd_demo_data, cmd_materialize
from featurestore.cli.join import cmd_join, render_table
from featurestore.cli.lineage import cmd_lineage_consume
from featurestore.cli.registry import (
    cmd_apply,
    cmd_canary_abort,
    cmd_canary_promote,
    cmd_canary_start,
    cmd_canary_status,
    cmd_registry_diff,
    cmd_registry_history,
    cmd_registry_rollback,
    cmd_registry_show,
    cmd_validate,
)
from featurestore.cli.serve import DEFAULT_DATA_DIR, cmd_serve
from featurestore.errors import FeatureStoreError

__all__ = ["main", "render_table"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        # until a command has read its config (whose log_level then applies)
        level=(
            getattr(args, "log_level", None) or os.environ.get("FEATURESTORE_LOG_LEVEL") or "info"
        ).upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )
    try:
        return int(args.func(args, argv) or 0)
    except FeatureStoreError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="featurestore", description="Online feature serving: serve, define, load, trace."
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve joins over HTTP and gRPC")
    s.add_argument("--config", help="YAML config file (see docs/configuration.md)")
    s.add_argument(
        "--demo",
        action="store_true",
        help="serve the built-in 100k-user demo (generates data once)",
    )
    s.add_argument("--data-dir", default=os.environ.get("FEATURESTORE_DATA_DIR", DEFAULT_DATA_DIR))
    s.add_argument(
        "--no-clickhouse",
        action="store_true",
        help="demo: serve the ClickHouse view from memory instead (no embedded ClickHouse engine, ~200 MB less RSS)",
    )
    s.add_argument("--definitions", help="definitions YAML applied at start when it differs from current")
    s.add_argument("--host", help="listen address for both HTTP and gRPC")
    s.add_argument("--http-host")
    s.add_argument("--http-port", type=int)
    s.add_argument("--grpc-host")
    s.add_argument("--grpc-port", type=int)
    s.add_argument("--workers", type=int, help="serving processes (default 1)")
    s.add_argument("--no-apply", action="store_true", help=argparse.SUPPRESS)
    s.add_argument("--log-level", help="debug, info, warning, error (default: the config's log_level)")
    s.set_defaults(func=cmd_serve)

    v = sub.add_parser("validate", help="validate a definitions file")
    v.add_argument("file")
    v.set_defaults(func=cmd_validate)

    j = sub.add_parser("join", help="join features for some entity keys and print a table")
    j.add_argument("--entity", action="append", required=True, metavar="NAME=K1[,K2...]")
    group = j.add_mutually_exclusive_group(required=True)
    group.add_argument("--features", help="comma-separated view:feature references")
    group.add_argument("--service", help="a feature service name")
    j.add_argument("--url", default="http://127.0.0.1:8080", help="HTTP endpoint of the server")
    j.add_argument("--grpc", metavar="HOST:PORT", help="use gRPC at this address instead of HTTP")
    j.add_argument("--full-names", action="store_true", help="name columns view__feature")
    j.add_argument("--string-keys", action="store_true", help="send keys as strings even if numeric")
    j.add_argument("--json", action="store_true", help="print the raw JSON response")
    j.set_defaults(func=cmd_join)

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

    a = sub.add_parser("apply", help="validate, diff and publish definitions as the next registry snapshot")
    a.add_argument("file")
    a.add_argument("--config", help="server config naming the registry")
    a.add_argument("--force", action="store_true", help="apply incompatible changes too")
    a.add_argument("--dry-run", action="store_true", help="print the diff only")
    a.add_argument("-m", "--message", default="")
    a.set_defaults(func=cmd_apply)

    # --config is accepted before or after the subcommand (SUPPRESS: the inner default
    # must not overwrite a value given before it).
    config_after = argparse.ArgumentParser(add_help=False)
    config_after.add_argument("--config", default=argparse.SUPPRESS, help="server config naming the registry")
    r = sub.add_parser("registry", help="registry history, snapshots, diffs and rollback")
    r.add_argument("--config", help="server config naming the registry")
    rsub = r.add_subparsers(dest="registry_command", required=True)
    rsub.add_parser("history", help="every snapshot, newest last", parents=[config_after]).set_defaults(
        func=cmd_registry_history
    )
    show = rsub.add_parser("show", help="one snapshot's definitions as JSON", parents=[config_after])
    show.add_argument("version", type=int)
    show.set_defaults(func=cmd_registry_show)
    rdiff = rsub.add_parser("diff", help="changes from snapshot A to snapshot B", parents=[config_after])
    rdiff.add_argument("a", type=int)
    rdiff.add_argument("b", type=int)
    rdiff.set_defaults(func=cmd_registry_diff)
    rb = rsub.add_parser(
        "rollback", help="publish an old snapshot's definitions as the new current", parents=[config_after]
    )
    rb.add_argument("version", type=int)
    rb.add_argument("--force", action="store_true")
    rb.set_defaults(func=cmd_registry_rollback)

    c = sub.add_parser("canary", help="gray release of a feature service")
    c.add_argument("--config", help="server config naming the registry")
    csub = c.add_subparsers(dest="canary_command", required=True)
    start = csub.add_parser(
        "start", help="serve a share of entities from candidate definitions", parents=[config_after]
    )
    start.add_argument("service")
    start.add_argument("--file", required=True, help="the candidate definitions")
    start.add_argument("--share", type=float, required=True, help="fraction of entities, e.g. 0.1")
    start.add_argument(
        "--entity",
        help="the entity whose key picks the side (default: the one keying most of the service's features)",
    )
    start.set_defaults(func=cmd_canary_start)
    csub.add_parser("status", help="active canaries", parents=[config_after]).set_defaults(
        func=cmd_canary_status
    )
    for name, helptext in (
        ("promote", "make the candidate the current snapshot"),
        ("abort", "stop the canary"),
    ):
        cp = csub.add_parser(name, help=helptext, parents=[config_after])
        cp.add_argument("service")
        cp.set_defaults(func=cmd_canary_promote if name == "promote" else cmd_canary_abort)

    lg = sub.add_parser("lineage", help="lineage pipeline commands")
    lsub = lg.add_subparsers(dest="lineage_command", required=True)
    lc = lsub.add_parser("consume", help="write lineage events from Kafka into the graph until stopped")
    lc.add_argument("--config", help="server config: lineage.kafka and lineage.bolt")
    lc.add_argument(
        "--metrics-port", type=int, default=9108, help="Prometheus metrics of the consumer (0: off)"
    )
    lc.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address the metrics listen on (0.0.0.0 in a container, so Prometheus can scrape them)",
    )
    lc.add_argument("--batch-size", type=int, default=500)
    lc.add_argument("--log-level", help="debug, info, warning, error (default: the config's log_level)")
    lc.set_defaults(func=cmd_lineage_consume)

    dd = sub.add_parser("ddl", help="print the ClickHouse DDL of the online tables the server uses")
    dd.add_argument("--config", help="server config naming the registry and stores")
    dd.set_defaults(func=cmd_ddl)

    d = sub.add_parser("demo-data", help="write the deterministic 100k-user demo Parquet file")
    d.add_argument("--out", default=DEFAULT_DATA_DIR)
    d.add_argument("--rows", type=int, default=100_000)
    d.set_defaults(func=cmd_demo_data)
    return p
