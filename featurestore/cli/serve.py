"""``featurestore serve``: one process or a supervisor of several, and the demo."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from featurestore.cli.base import Subcommands, port
from featurestore.errors import InvalidArgument

DEFAULT_DATA_DIR = "data"


def register(sub: Subcommands) -> None:
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
    s.add_argument("--http-port", type=port())
    s.add_argument("--grpc-host")
    s.add_argument("--grpc-port", type=port())
    s.add_argument("--workers", type=int, help="serving processes (default 1)")
    s.add_argument("--no-apply", action="store_true", help=argparse.SUPPRESS)
    s.add_argument(
        "--log-level", help="debug, info, warning, error, critical (default: the config's log_level)"
    )
    s.set_defaults(func=cmd_serve)

    d = sub.add_parser("demo-data", help="write the deterministic 100k-user demo Parquet file")
    d.add_argument("--out", default=DEFAULT_DATA_DIR)
    d.add_argument(
        "--rows", type=int, default=100_000, help="users (files there of another size are written again)"
    )
    d.set_defaults(func=cmd_demo_data)


def serve_config(args: argparse.Namespace) -> Any:
    from featurestore.config import load_config

    overrides: dict[tuple[str, ...], Any] = {
        ("http", "host"): args.http_host or args.host,
        ("http", "port"): args.http_port,
        ("grpc", "host"): args.grpc_host or args.host,
        ("grpc", "port"): args.grpc_port,
        ("workers",): args.workers,
        ("log_level",): args.log_level,
    }
    # the flags that set them, for errors to name (the config file does not hold their values)
    flags = {
        ("http", "host"): "--http-host" if args.http_host else "--host",
        ("http", "port"): "--http-port",
        ("grpc", "host"): "--grpc-host" if args.grpc_host else "--host",
        ("grpc", "port"): "--grpc-port",
        ("workers",): "--workers",
        ("log_level",): "--log-level",
    }
    if args.demo:
        from featurestore.demo.data import ensure_demo_data

        data_dir = Path(args.data_dir).resolve()
        ensure_demo_data(data_dir)
        demo_defs = resources.files("featurestore.demo") / "features.yaml"
        overrides[("registry", "path")] = str(data_dir / "registry")
        overrides[("registry", "definitions")] = str(demo_defs)
        overrides[("registry", "definitions_base_dir")] = str(data_dir)
        overrides[("derived", "cache_dir")] = str(data_dir / "derived-cache")
        if not args.config:
            analytics = (
                {"kind": "memory"}
                if args.no_clickhouse
                else {"kind": "clickhouse", "dsn": f"chdb://{data_dir / 'clickhouse'}"}
            )
            overrides[("stores",)] = {"default": {"kind": "memory"}, "analytics": analytics}
    if args.definitions:
        overrides[("registry", "definitions")] = args.definitions
        flags[("registry", "definitions")] = "--definitions"
    from featurestore.logconfig import configure_logging

    config = load_config(args.config, overrides, flags)
    configure_logging(config.log_level, config.log_format)
    if args.no_apply:
        import dataclasses

        registry = dataclasses.replace(config.registry, definitions=None)
        config = config.model_copy(update={"registry": registry})
    return config


def cmd_serve(args: argparse.Namespace, argv: list[str]) -> int:
    from featurestore import jobs, supervisor
    from featurestore.config import check_embedded_store_alone
    from lineage.runs import BufferedRuns

    config = serve_config(args)
    check_embedded_store_alone(config, args.config)  # before anything opens a store
    asyncio.run(jobs.apply_configured_definitions(config))
    runs = BufferedRuns()  # the demo's materialization runs, for the graph the server builds
    if args.demo:
        asyncio.run(_demo_materialize(config, runs))

    def announce() -> None:
        # once per server: by the supervisor when its first worker serves, not by each worker
        if args.demo and supervisor.WORKER_ENV not in os.environ:
            _print_demo_help(config)

    if config.workers > 1:
        from featurestore.listener_config import listeners

        ports = listeners(config.http, config.grpc)
        return supervisor.supervise(config.workers, supervisor.worker_argv_from(argv), announce, ports)
    from featurestore.process import run_process

    run_process(config, on_ready=announce, runs=runs.runs)
    return 0


async def _demo_materialize(config: Any, runs: Any) -> None:
    """Fill the demo's ClickHouse view once. The embedded engine lives in this process,
    so this runs here, before serving, not as a separate command."""
    from featurestore import jobs
    from featurestore.factories import make_registry
    from featurestore.offline import ParquetOfflineSource

    registry = make_registry(config)
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
        [result] = await jobs.materialize(
            config,
            [view.name],
            ParquetOfflineSource(view.batch_source.path),
            batch_rows=50_000,
            grace_seconds=600,
            runs=runs,
        )
        print(
            f"demo: {view.name}: {result.rows_written:,} rows in {result.seconds:.1f}s",
            file=sys.stderr,
            flush=True,
        )


def _print_demo_help(config: Any) -> None:
    print(demo_help(config), flush=True)


def demo_help(config: Any) -> str:
    """The demo's banner: commands that work against this server as configured (scheme,
    ports, a reachable address for a wildcard host, TLS files and a token where needed);
    the files the server cannot know are placeholders, explained below the commands."""
    from featurestore.config import EMBEDDED_CLICKHOUSE

    http, grpc, tls, auth = config.http, config.grpc, config.tls, config.auth
    url = f"{'https' if tls.enabled else 'http'}://{_address(http.host, http.port)}"
    admin_url = url if http.admin_port is None else f"http://{_address(http.host, http.admin_port)}"
    target = _address(grpc.host, grpc.port)
    curl, join, notes = ["curl", "-s"], ["featurestore", "join"], []
    if tls.enabled:
        curl += ["--cacert", "CA.pem"]
        join += ["--ca", "CA.pem"]
        notes.append(f"CA.pem: the CA that signed tls.cert_file ({tls.cert_file})")
    if tls.client_ca_file:
        curl += ["--cert", "CLIENT.pem", "--key", "CLIENT-KEY.pem"]
        join += ["--cert", "CLIENT.pem", "--key", "CLIENT-KEY.pem"]
        notes.append(
            f"CLIENT.pem, CLIENT-KEY.pem: a client certificate of tls.client_ca_file ({tls.client_ca_file})"
        )
    if (auth.tokens_file or auth.tokens.get_secret_value()) and auth.read:
        curl += ["-H", '"authorization: Bearer $(cat TOKEN_FILE)"']
        join += ["--token-file", "TOKEN_FILE"]
        notes.append("TOKEN_FILE: a file holding a token of scope read (auth)")
    stores = []
    for store in config.stores.values():
        dsn = str(store.options.get("dsn", EMBEDDED_CLICKHOUSE))  # no dsn: the embedded engine
        kind = {"memory": "memory", "redis": "Redis"}.get(store.kind, "ClickHouse")
        kind = "embedded ClickHouse" if kind == "ClickHouse" and dsn.startswith(EMBEDDED_CLICKHOUSE) else kind
        stores += [kind] if kind not in stores else []
    body = '{"entities": {"user_id": [17, 4242]}, "features": ["user_profile:age", "user_activity:ctr_30d"]}'
    joins = " ".join(join)
    lines = [
        "",
        "featurestore demo is up: 100,000 users, views user_profile and user_activity.",
        f"  {' '.join(curl)} -X POST {url}/v1/feature/join -H 'content-type: application/json' \\",
        f"       -d '{body}'",
        f"  {joins} --url {url} --entity user_id=17 --service risk_v1   # stores: {' + '.join(stores)}",
        f"  {joins} --grpc {target} --entity user_id=17 --service risk_v1",
        f"  gRPC: {target} (featurestore.v1.FeatureService/Join, reflection on)",
        f"  docs: {url}/docs   metrics: {admin_url}/metrics",
        *(f"  {note}" for note in notes),
        "Ctrl-C stops it.",
    ]
    return "\n".join(lines) + "\n"


def _address(host: str, port: int) -> str:
    """``host:port`` to connect to: a wildcard host (every address) as loopback, an IPv6
    address in brackets."""
    bare = host.strip().strip("[]")
    if bare in ("", "0.0.0.0"):
        bare = "127.0.0.1"
    elif bare == "::":
        bare = "::1"
    return f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"


def cmd_demo_data(args: argparse.Namespace, _argv: list[str]) -> int:
    from featurestore.demo.data import ensure_demo_data

    if args.rows < 1:
        raise InvalidArgument(f"--rows must be at least 1, got {args.rows}")
    path = ensure_demo_data(args.out, n=args.rows, resize=True)
    print(f"demo data: {path} ({args.rows:,} users)")
    return 0
