"""``featurestore serve``: one process or a supervisor of several, and the demo."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from importlib import resources
from pathlib import Path
from typing import Any

DEFAULT_DATA_DIR = "data"


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
    logging.getLogger().setLevel(config.log_level.upper())
    if args.no_apply:
        import dataclasses

        config = dataclasses.replace(config, registry=dataclasses.replace(config.registry, definitions=None))
    return config


def cmd_serve(args: argparse.Namespace, argv: list[str]) -> int:
    from featurestore import server, supervisor

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
        return supervisor.supervise(config.workers, supervisor.worker_argv_from(argv))
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
