"""``featurestore`` command line: serve, validate, join (and more as they land)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any

from featurestore.errors import FeatureStoreError

DEFAULT_DATA_DIR = "data"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "info").upper(),
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
    p = argparse.ArgumentParser(prog="featurestore", description=__doc__)
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
        help="demo: serve the ClickHouse view from memory instead (no embedded ClickHouse engine, ~270 MB less RSS)",
    )
    s.add_argument("--definitions", help="definitions YAML applied at start when it differs from current")
    s.add_argument("--host", help="listen address for both HTTP and gRPC")
    s.add_argument("--http-host")
    s.add_argument("--http-port", type=int)
    s.add_argument("--grpc-host")
    s.add_argument("--grpc-port", type=int)
    s.add_argument("--workers", type=int, help="serving processes (default 1)")
    s.add_argument("--no-apply", action="store_true", help=argparse.SUPPRESS)
    s.add_argument("--log-level", default=os.environ.get("FEATURESTORE_LOG_LEVEL", "info"))
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

    r = sub.add_parser("registry", help="registry history, snapshots, diffs and rollback")
    r.add_argument("--config", help="server config naming the registry")
    rsub = r.add_subparsers(dest="registry_command", required=True)
    rsub.add_parser("history", help="every snapshot, newest last").set_defaults(func=cmd_registry_history)
    show = rsub.add_parser("show", help="one snapshot's definitions as JSON")
    show.add_argument("version", type=int)
    show.set_defaults(func=cmd_registry_show)
    rdiff = rsub.add_parser("diff", help="changes from snapshot A to snapshot B")
    rdiff.add_argument("a", type=int)
    rdiff.add_argument("b", type=int)
    rdiff.set_defaults(func=cmd_registry_diff)
    rb = rsub.add_parser("rollback", help="publish an old snapshot's definitions as the new current")
    rb.add_argument("version", type=int)
    rb.add_argument("--force", action="store_true")
    rb.set_defaults(func=cmd_registry_rollback)

    c = sub.add_parser("canary", help="gray release of a feature service")
    c.add_argument("--config", help="server config naming the registry")
    csub = c.add_subparsers(dest="canary_command", required=True)
    start = csub.add_parser("start", help="serve a share of entities from candidate definitions")
    start.add_argument("service")
    start.add_argument("--file", required=True, help="the candidate definitions")
    start.add_argument("--share", type=float, required=True, help="fraction of entities, e.g. 0.1")
    start.set_defaults(func=cmd_canary_start)
    csub.add_parser("status", help="active canaries").set_defaults(func=cmd_canary_status)
    for name, helptext in (
        ("promote", "make the candidate the current snapshot"),
        ("abort", "stop the canary"),
    ):
        cp = csub.add_parser(name, help=helptext)
        cp.add_argument("service")
        cp.set_defaults(func=cmd_canary_promote if name == "promote" else cmd_canary_abort)

    lg = sub.add_parser("lineage", help="lineage pipeline commands")
    lsub = lg.add_subparsers(dest="lineage_command", required=True)
    lc = lsub.add_parser("consume", help="write lineage events from Kafka into the graph until stopped")
    lc.add_argument("--config", help="server config: lineage.kafka and lineage.bolt")
    lc.add_argument(
        "--metrics-port", type=int, default=9108, help="Prometheus metrics of the consumer (0: off)"
    )
    lc.add_argument("--batch-size", type=int, default=500)
    lc.add_argument("--log-level", default=os.environ.get("FEATURESTORE_LOG_LEVEL", "info"))
    lc.set_defaults(func=cmd_lineage_consume)

    dd = sub.add_parser("ddl", help="print the ClickHouse DDL of the online tables the server uses")
    dd.add_argument("--config", help="server config naming the registry and stores")
    dd.set_defaults(func=cmd_ddl)

    d = sub.add_parser("demo-data", help="write the deterministic 100k-user demo Parquet file")
    d.add_argument("--out", default=DEFAULT_DATA_DIR)
    d.add_argument("--rows", type=int, default=100_000)
    d.set_defaults(func=cmd_demo_data)
    return p


# -- serve -----------------------------------------------------------------------------


def _serve_config(args: argparse.Namespace) -> Any:
    from featurestore.config import load_config

    overrides: dict[tuple[str, ...], Any] = {
        ("http", "host"): args.http_host or args.host,
        ("http", "port"): args.http_port,
        ("grpc", "host"): args.grpc_host or args.host,
        ("grpc", "port"): args.grpc_port,
        ("workers",): args.workers,
        ("log_level",): args.log_level,
    }
    if args.demo:
        from featurestore.demo.data import ensure_demo_data

        data_dir = Path(args.data_dir).resolve()
        ensure_demo_data(data_dir)
        demo_defs = resources.files("featurestore.demo") / "features.yaml"
        overrides[("registry", "path")] = str(data_dir / "registry")
        overrides[("registry", "definitions")] = str(demo_defs)
        overrides[("registry", "definitions_base_dir")] = str(data_dir)
        if not args.config:
            analytics = (
                {"kind": "memory"}
                if args.no_clickhouse
                else {"kind": "clickhouse", "dsn": f"chdb://{data_dir / 'clickhouse'}"}
            )
            overrides[("stores",)] = {"default": {"kind": "memory"}, "analytics": analytics}
    if args.definitions:
        overrides[("registry", "definitions")] = args.definitions
    config = load_config(args.config, overrides)
    if args.no_apply:
        import dataclasses

        config = dataclasses.replace(config, registry=dataclasses.replace(config.registry, definitions=None))
    return config


def cmd_serve(args: argparse.Namespace, argv: list[str]) -> int:
    from featurestore import server

    config = _serve_config(args)
    if config.registry.definitions:

        async def apply() -> None:
            registry = server.make_registry(config)
            try:
                await server.apply_on_start(registry, config)
            finally:
                await registry.close()

        asyncio.run(apply())
    if args.demo:
        asyncio.run(_demo_materialize(config))

    def announce() -> None:
        if args.demo:
            _print_demo_help(config)

    if config.workers > 1:
        import threading

        if args.demo:
            threading.Timer(3.0, announce).start()
        return server.supervise(config.workers, server.worker_argv_from(argv))
    server.run_process(config, on_ready=announce)
    return 0


async def _demo_materialize(config: Any) -> None:
    """Fill the demo's ClickHouse view once. The embedded engine lives in this process,
    so this runs here, before serving, not as a separate command."""
    from featurestore import server
    from featurestore.offline import ParquetSource

    registry = server.make_registry(config)
    try:
        snapshot = await registry.current()
        versions = await registry.data_versions()
    finally:
        await registry.close()
    if snapshot is None:
        return
    for view in snapshot.definitions.views.values():
        store = config.stores.get(view.online_store)
        if store is None or store.kind not in ("clickhouse", "redis") or versions.get(view.name, 0) > 0:
            continue
        if view.batch_source is None or view.batch_source.path is None:
            continue
        print(
            f"demo: loading {view.name} into store {view.online_store} ({store.kind}) ...",
            file=sys.stderr,
            flush=True,
        )
        result = await server.materialize(
            config, view.name, ParquetSource(view.batch_source.path), batch_rows=50_000, grace_seconds=600
        )
        print(
            f"demo: {view.name}: {result.rows_written:,} rows in {result.seconds:.1f}s",
            file=sys.stderr,
            flush=True,
        )


def _print_demo_help(config: Any) -> None:
    url = f"http://{config.http.host}:{config.http.port}"
    body = '{"entities": {"user_id": [17, 4242]}, "features": ["user_profile:age", "user_activity:ctr_30d"]}'
    print(
        f"\nfeaturestore demo is up: 100,000 users, views user_profile and user_activity.\n"
        f"  curl -s -X POST {url}/v1/feature/join -H 'content-type: application/json' \\\n"
        f"       -d '{body}'\n"
        f"  featurestore join --entity user_id=17 --service risk_v1      (memory + embedded ClickHouse)\n"
        f"  gRPC: {config.grpc.host}:{config.grpc.port} (featurestore.v1.FeatureService/Join, reflection on)\n"
        f"  docs: {url}/docs   metrics: {url}/metrics\n"
        f"Ctrl-C stops it.\n",
        flush=True,
    )


# -- validate --------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace, _argv: list[str]) -> int:
    from featurestore.registry.definitions import load_definitions
    from featurestore.registry.snapshot import fingerprint

    defs = load_definitions(args.file)
    n_features = sum(len(v.features) for v in defs.views.values())
    print(
        f"{args.file}: OK - project {defs.project}: {len(defs.entities)} entities, "
        f"{len(defs.views)} feature views ({n_features} features), {len(defs.services)} feature services; "
        f"fingerprint {fingerprint(defs)[:12]}"
    )
    return 0


# -- join ------------------------------------------------------------------------------


def _entities(specs: list[str], string_keys: bool) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        if not sep or not name:
            raise SystemExit(f"--entity expects NAME=K1[,K2...], got {spec!r}")
        parts = values.split(",")
        numeric = not string_keys and all(p.lstrip("-").isdigit() for p in parts)
        out[name] = [int(p) for p in parts] if numeric else parts
    return out


def cmd_join(args: argparse.Namespace, _argv: list[str]) -> int:
    entities = _entities(args.entity, args.string_keys)
    features = [f.strip() for f in args.features.split(",")] if args.features else []
    if args.grpc:
        names, columns, meta = _join_grpc(args.grpc, entities, features, args.service, args.full_names)
    else:
        body: dict[str, Any] = {"entities": entities, "full_feature_names": args.full_names}
        if features:
            body["features"] = features
        else:
            body["feature_service"] = args.service
        req = urllib.request.Request(
            args.url.rstrip("/") + "/v1/feature/join",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                doc = json.loads(r.read())
        except urllib.error.HTTPError as e:
            err = json.loads(e.read() or b"{}").get("error", {})
            print(f"error {e.code} {err.get('code', '')}: {err.get('message', '')}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(doc, indent=2))
            return 0
        names = doc["metadata"]["feature_names"]
        columns = doc["results"]
        meta = doc["metadata"]
    print(render_table(names, columns))
    print(
        f"\nregistry version {meta['registry_version']}, trace {meta['trace_id']}, partial={meta['partial']}"
    )
    return 0


def _join_grpc(
    target: str,
    entities: dict[str, list[Any]],
    features: list[str],
    service: str | None,
    full: bool,
) -> tuple[list[str], list[dict[str, Any]], dict[str, Any]]:
    import grpc

    from featurestore.api.proto_codec import column_values
    from featurestore.v1 import featurestore_pb2 as pb
    from featurestore.v1 import featurestore_pb2_grpc as pbg

    req = pb.JoinRequest(features=features, feature_service=service or "", full_feature_names=full)
    for name, values in entities.items():
        col = req.entities.add(name=name)
        if values and isinstance(values[0], int):
            col.int64_values.values.extend(values)
        else:
            col.string_values.values.extend(values)
    with grpc.insecure_channel(target) as channel:
        try:
            resp = pbg.FeatureServiceStub(channel).Join(req, timeout=10)  # type: ignore[no-untyped-call]
        except grpc.RpcError as e:
            raise SystemExit(f"error {e.code().name}: {e.details()}") from None
    columns = [
        {
            "values": column_values(c),
            "statuses": [pb.Status.Name(s) for s in c.statuses],
            "event_timestamps": [_iso(t) if t else None for t in c.event_timestamps],
        }
        for c in resp.results
    ]
    meta = {
        "registry_version": resp.metadata.registry_version,
        "trace_id": resp.metadata.trace_id,
        "partial": resp.metadata.partial,
    }
    return list(resp.metadata.feature_names), columns, meta


def _iso(us: int) -> str:
    from featurestore.api.json_codec import iso_utc

    return iso_utc(us)


def _cell(value: Any, status: str) -> str:
    if status != "PRESENT":
        return f"- ({status})"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def render_table(names: list[str], columns: list[dict[str, Any]]) -> str:
    rows = len(columns[0]["values"]) if columns else 0
    if rows == 1:
        width = max(len(n) for n in names)
        lines = [f"{'feature'.ljust(width)}  {'value':<24} {'status':<16} event_timestamp"]
        for name, col in zip(names, columns, strict=True):
            v, st, ts = col["values"][0], col["statuses"][0], col["event_timestamps"][0]
            lines.append(
                f"{name.ljust(width)}  {_cell(v, 'PRESENT' if v is not None else st):<24} {st:<16} {ts or ''}"
            )
        return "\n".join(lines)
    cells = [[_cell(c["values"][i], c["statuses"][i]) for c in columns] for i in range(rows)]
    widths = [max(len(n), *(len(r[j]) for r in cells)) for j, n in enumerate(names)]
    head = "  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([head, sep, *body])


# -- materialize -----------------------------------------------------------------------


def cmd_materialize(args: argparse.Namespace, _argv: list[str]) -> int:
    import time

    from featurestore import server
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
        if config.registry.definitions:
            registry = server.make_registry(config)
            try:
                await server.apply_on_start(registry, config)
            finally:
                await registry.close()
        dsn = args.clickhouse_dsn or next(
            (str(sc.options.get("dsn", "")) for sc in config.stores.values() if sc.kind == "clickhouse"), None
        )
        return await server.materialize(
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


# -- registry administration ------------------------------------------------------------


def _admin(args: argparse.Namespace, fn: Any) -> Any:
    """Run ``fn(admin)`` against the registry the config names."""
    from featurestore import server
    from featurestore.config import load_config
    from featurestore.registry.admin import RegistryAdmin

    config = load_config(getattr(args, "config", None))

    async def run() -> Any:
        registry = server.make_registry(config)
        try:
            return await fn(RegistryAdmin(registry))
        finally:
            await registry.close()

    return asyncio.run(run())


def cmd_apply(args: argparse.Namespace, _argv: list[str]) -> int:
    from featurestore.registry.definitions import load_definitions
    from featurestore.registry.diff import render

    defs = load_definitions(args.file)
    result = _admin(
        args, lambda a: a.apply(defs, force=args.force, dry_run=args.dry_run, message=args.message)
    )
    if not result.changes:
        print(f"no changes: registry version {result.previous} already holds these definitions")
        return 0
    print(render(result.changes))
    if result.snapshot is None:
        print(f"dry run: would publish version {(result.previous or 0) + 1}")
    else:
        print(f"published registry version {result.snapshot.version} (was {result.previous})")
        _definitions_to_lineage_graph(args, result.snapshot)
    return 0


def _definitions_to_lineage_graph(args: argparse.Namespace, snapshot: Any) -> None:
    """With a Neo4j lineage graph, applying definitions writes views, services and
    DERIVED_FROM edges there, so lineage exists before the first read."""
    from featurestore import server
    from featurestore.config import load_config
    from lineage.graph.base import definition_facts

    config = load_config(getattr(args, "config", None))
    if not config.lineage.enabled or config.lineage.graph != "bolt":
        return

    async def write() -> None:
        graph = server.make_graph(config)
        await graph.start()
        try:
            await graph.apply_definitions(definition_facts(snapshot))
        finally:
            await graph.close()

    asyncio.run(write())
    print(f"lineage graph: definitions of version {snapshot.version} written to {config.lineage.bolt.uri}")


def cmd_registry_history(args: argparse.Namespace, _argv: list[str]) -> int:
    rows = _admin(args, lambda a: a.history())
    if not rows:
        print("the registry is empty")
    for snap, current in rows:
        d = snap.definitions
        mark = "*" if current else " "
        print(
            f"{mark} {snap.version:>4}  {snap.created_at}  {snap.fingerprint[:12]}  "
            f"{len(d.views)} views, {len(d.services)} services  {snap.message}"
        )
    return 0


def cmd_registry_show(args: argparse.Namespace, _argv: list[str]) -> int:
    from featurestore.registry.snapshot import snapshot_to_json

    snap = _admin(args, lambda a: a.registry.get(args.version))
    print(json.dumps(json.loads(snapshot_to_json(snap)), indent=2))
    return 0


def cmd_registry_diff(args: argparse.Namespace, _argv: list[str]) -> int:
    from featurestore.registry.diff import render

    changes = _admin(args, lambda a: a.diff(args.a, args.b))
    print(render(changes) if changes else f"versions {args.a} and {args.b} hold the same definitions")
    return 0


def cmd_registry_rollback(args: argparse.Namespace, _argv: list[str]) -> int:
    from featurestore.registry.diff import render

    result = _admin(args, lambda a: a.rollback(args.version, force=args.force))
    if result.snapshot is not None:
        _definitions_to_lineage_graph(args, result.snapshot)
    if result.snapshot is None:
        print(f"no changes: the current snapshot already holds version {args.version}'s definitions")
        return 0
    print(render(result.changes))
    print(f"rolled back: version {result.snapshot.version} holds version {args.version}'s definitions")
    return 0


def cmd_canary_start(args: argparse.Namespace, _argv: list[str]) -> int:
    from featurestore.registry.definitions import load_definitions

    defs = load_definitions(args.file)
    c = _admin(args, lambda a: a.canary_start(args.service, defs, args.share))
    print(
        f"canary started: {args.service} serves {c.share:.1%} of entities from version {c.candidate_version} "
        f"(current: {c.base_version})"
    )
    return 0


def cmd_canary_status(args: argparse.Namespace, _argv: list[str]) -> int:
    canaries = _admin(args, lambda a: a.registry.canaries())
    if not canaries:
        print("no canaries")
    for service, c in sorted(canaries.items()):
        print(
            f"{service}: {c.share:.1%} of entities on version {c.candidate_version} (base {c.base_version})"
        )
    return 0


def cmd_canary_promote(args: argparse.Namespace, _argv: list[str]) -> int:
    c = _admin(args, lambda a: a.canary_promote(args.service))
    print(
        f"promoted: version {c.candidate_version} is current (was {c.base_version}); canary of {args.service} ended"
    )
    return 0


def cmd_canary_abort(args: argparse.Namespace, _argv: list[str]) -> int:
    c = _admin(args, lambda a: a.canary_abort(args.service))
    print(
        f"aborted: {args.service} is served from current again (candidate version {c.candidate_version} unused)"
    )
    return 0


def cmd_lineage_consume(args: argparse.Namespace, _argv: list[str]) -> int:
    import signal

    from prometheus_client import start_http_server

    from featurestore import server
    from featurestore.config import load_config
    from lineage.consumer import ConsumerConfig, LineageConsumer

    config = load_config(args.config)
    k = config.lineage.kafka
    if args.metrics_port:
        start_http_server(args.metrics_port, addr="127.0.0.1")

    async def run() -> None:
        graph = server.make_graph(config)
        await graph.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        consumer = LineageConsumer(
            ConsumerConfig(
                bootstrap_servers=k.bootstrap_servers,
                topic=k.topic,
                group_id=k.group_id,
                dead_letter_topic=f"{k.topic}.dlq",
                batch_size=args.batch_size,
                session_timeout_ms=k.session_timeout_ms,
                heartbeat_interval_ms=max(k.session_timeout_ms // 5, 100),
                window_seconds=config.lineage.window_seconds,
            ),
            graph,
        )
        try:
            await consumer.run(stop)
        finally:
            await graph.close()
        print(
            f"lineage consumer stopped: {consumer.written} events written, {consumer.dead_lettered} dead-lettered"
        )

    asyncio.run(run())
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


# -- demo data -------------------------------------------------------------------------


def cmd_demo_data(args: argparse.Namespace, _argv: list[str]) -> int:
    from featurestore.demo.data import ensure_demo_data

    path = ensure_demo_data(args.out, n=args.rows)
    print(f"demo data: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
