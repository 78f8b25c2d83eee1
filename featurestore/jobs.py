"""One-shot jobs the CLI runs against the configured registry and stores: publish the
configured definitions, materialize views. Each builds what it needs from
``factories`` and closes it again."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from featurestore.config import Config
from featurestore.definitions.parser import load_definitions
from featurestore.definitions.snapshot import RegistrySnapshot, fingerprint
from featurestore.derived.compiler import cache_dir, check_definitions
from featurestore.errors import Conflict, FailedPrecondition, InvalidArgument
from featurestore.factories import make_registry, make_store
from featurestore.materialize import Materializer, MaterializeResult, Progress
from featurestore.model import FeatureView
from featurestore.offline import EVERYTHING, EventTimeRange, OfflineSource, open_source
from featurestore.registry.base import Registry
from featurestore.sources.clickhouse.options import ClickHouseOptions

log = logging.getLogger("featurestore")


async def apply_on_start(registry: Registry, config: Config) -> RegistrySnapshot | None:
    """Publish ``registry.definitions`` unless current already holds the same content."""
    path = config.registry.definitions
    if path is None:
        return None
    defs = load_definitions(path, config.registry.definitions_base_dir)
    if defs.project != config.project:
        raise InvalidArgument(
            f"{path}: project {defs.project!r} differs from the server's {config.project!r}"
        )
    check_definitions(defs, cache_dir(config.derived.cache_dir))  # a kernel that fails is never published
    for _ in range(5):
        current = await registry.current()
        if current is not None and current.fingerprint == fingerprint(defs):
            return current
        try:
            snap = await registry.publish(
                defs,
                expected_version=current.version if current else None,
                message=f"applied on start from {path}",
            )
            log.info("applied %s as registry version %d", path, snap.version)
            return snap
        except Conflict as e:  # a concurrent apply won: re-read and compare again
            log.info("apply on start raced (%s); re-reading", e.message)
    raise FailedPrecondition("could not apply definitions on start: the registry keeps changing")


async def apply_configured_definitions(config: Config) -> None:
    """``apply_on_start`` with a registry of its own (for commands run before serving)."""
    if not config.registry.definitions:
        return
    registry = make_registry(config)
    try:
        await apply_on_start(registry, config)
    finally:
        await registry.close()


async def materialize(
    config: Config,
    views: Sequence[str] | None,
    source: OfflineSource | None = None,
    *,
    batch_rows: int,
    grace_seconds: int,
    span: EventTimeRange = EVERYTHING,
    incremental: bool = False,
    clickhouse_dsn: str | None = None,
    on_start: Callable[[str, OfflineSource], Callable[[Progress], None] | None] | None = None,
) -> list[MaterializeResult]:
    """Materialize views one after another with the stores and registry the config
    names: ``views`` (None: every view of the current snapshot), each from ``source`` or,
    by default, its definition's ``batch_source`` (a Parquet path, or a ClickHouse table
    read through ``clickhouse_dsn`` or the config's first ClickHouse store).
    ``on_start(view, source)`` may return the progress callback of that view's run."""
    registry = make_registry(config)
    try:
        snapshot = await registry.current()
        if snapshot is None:
            raise FailedPrecondition("the registry has no snapshot: apply definitions first")
        names = sorted(snapshot.definitions.views) if views is None else list(views)
        if source is not None and len(names) != 1:
            raise InvalidArgument("--source names one view's source: materialize one view with it")
        unknown = [v for v in names if v not in snapshot.definitions.views]
        if unknown:
            raise InvalidArgument(f"unknown feature view {unknown[0]!r}")
        results = []
        for name in names:
            definition = snapshot.definitions.views[name]
            src = source or default_source(definition, config, clickhouse_dsn)
            progress = on_start(name, src) if on_start is not None else None
            results.append(
                await _materialize_one(
                    config, registry, definition, src, batch_rows, grace_seconds, progress, span, incremental
                )
            )
        return results
    finally:
        await registry.close()


def warehouse(config: Config, clickhouse_dsn: str | None) -> str | ClickHouseOptions | None:
    """Where ``clickhouse://`` sources are read: ``--clickhouse-dsn``, else the config's
    first ``clickhouse`` store, with its user and password (None: neither)."""
    if clickhouse_dsn:
        return clickhouse_dsn
    for name, sc in config.stores.items():
        if sc.kind == "clickhouse":
            try:
                return ClickHouseOptions.from_mapping(dict(sc.options))
            except (TypeError, ValueError) as e:
                raise InvalidArgument(f"stores.{name}: {e}") from None
    return None


def default_source(view: FeatureView, config: Config, clickhouse_dsn: str | None) -> OfflineSource:
    """The view's ``batch_source``: its Parquet path, or its warehouse table."""
    bs = view.batch_source
    if bs is None:
        raise InvalidArgument(f"view {view.name!r} declares no batch_source: name one with --source")
    if bs.table is not None:
        return open_source(f"clickhouse://{bs.table}", warehouse(config, clickhouse_dsn))
    assert bs.path is not None
    return open_source(bs.path)


async def _materialize_one(
    config: Config,
    registry: Registry,
    definition: FeatureView,
    source: OfflineSource,
    batch_rows: int,
    grace_seconds: int,
    on_progress: Callable[[Progress], None] | None,
    span: EventTimeRange,
    incremental: bool,
) -> MaterializeResult:
    sc = config.stores.get(definition.online_store)
    if sc is None:
        raise FailedPrecondition(
            f"view {definition.name!r} uses store {definition.online_store!r}, which the config lacks"
        )
    store = make_store(definition.online_store, sc, config)
    await store.start()
    try:
        job = Materializer(registry, store, grace_seconds=grace_seconds)
        return await job.run(
            definition.name,
            source,
            batch_rows=batch_rows,
            on_progress=on_progress,
            span=span,
            incremental=incremental,
        )
    finally:
        await store.close()
