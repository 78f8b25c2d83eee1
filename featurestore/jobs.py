"""One-shot jobs the CLI runs against the configured registry and stores: publish the
configured definitions, materialize views. Each builds what it needs from
``factories`` and closes it again."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from featurestore.config import Config
from featurestore.definitions.parser import load_definitions
from featurestore.definitions.snapshot import RegistrySnapshot, fingerprint
from featurestore.derived.compiler import cache_dir, check_definitions
from featurestore.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from featurestore.factories import make_registry, make_run_recorder, make_store
from featurestore.materialize import Materializer, MaterializeResult, Progress
from featurestore.model import FeatureView
from featurestore.offline import EVERYTHING, EventTimeRange, OfflineSource, open_source
from featurestore.registry.admin import Incompatible, RegistryAdmin
from featurestore.registry.base import Registry
from featurestore.sources.clickhouse.options import ClickHouseOptions
from featurestore.store_config import StoreConfig
from lineage.runs import DataVersion, RunRecorder, RunSink, now_iso

log = logging.getLogger("featurestore")


async def apply_on_start(
    registry: Registry, config: Config, *, force: bool = False, force_flag: str = ""
) -> RegistrySnapshot | None:
    """Publish ``registry.definitions`` unless current already holds the same content,
    by ``featurestore apply``'s rules: incompatible changes are refused (the server does
    not start; ``featurestore apply FILE --force`` publishes them) unless ``force``
    (``materialize --definitions FILE --force``, which ``force_flag`` names in the
    refusal). A file holding the definitions of an older snapshot (a later apply,
    rollback or canary promotion replaced them) is not published, forced or not: the
    server serves current and says so."""
    path = config.registry.definitions
    if path is None:
        return None
    defs = load_definitions(path, config.registry.definitions_base_dir)
    if defs.project != config.project:
        raise InvalidArgument(
            f"{path}: project {defs.project!r} differs from the server's {config.project!r}"
        )
    wanted = fingerprint(defs)
    admin = RegistryAdmin(registry)
    checked = False
    for _ in range(5):
        current = await registry.current()
        if current is not None and current.fingerprint == wanted:
            return current
        older = await _older_snapshot(registry, wanted, current)
        if current is not None and older is not None:
            _warn_older(path, older, current.version, pruned=older not in await registry.versions())
            return current
        if not checked:  # a kernel that fails is never published
            check_definitions(defs, cache_dir(config.derived.cache_dir))
            checked = True
        try:
            result = await admin.apply(defs, force=force, message=f"applied on start from {path}")
        except Conflict as e:  # a concurrent apply won: re-read and compare again
            log.info("apply on start raced (%s); re-reading", e.message)
            continue
        except Incompatible as e:
            how = f"pass {force_flag}" if force_flag else "start without it"
            raise Incompatible(
                f"{path} is not applied on start: {e.message}. Publish it with "
                f"`featurestore apply {path} --force`, or {how}"
            ) from None
        if result.snapshot is None:
            return await registry.current()
        log.info("applied %s as registry version %d", path, result.snapshot.version)
        return result.snapshot
    raise FailedPrecondition("could not apply definitions on start: the registry keeps changing")


async def _older_snapshot(registry: Registry, wanted: str, current: RegistrySnapshot | None) -> int | None:
    """The newest version other than current published with definitions of fingerprint
    ``wanted``, pruned since or not (None: none was). The registry's index of published
    fingerprints (never pruned) answers a known file in one read. A miss, as for every
    new file, is answered by the fingerprints recorded beside each stored snapshot (one
    read of small values); only snapshots without a record (written by a release before
    the records, as during a rolling upgrade) are read in full, and of those only the
    ones newer than the newest recorded match (one that vanished meanwhile or is
    corrupted is skipped: its fingerprint cannot be trusted)."""
    if current is None:
        return None
    indexed = await registry.published_with(wanted)
    if indexed is not None and indexed != current.version:
        return indexed
    # Not indexed, or indexed as current's number while current has other definitions
    # (a snapshot rewritten in place): the records, and the snapshots without one, decide.
    recorded = await registry.snapshot_fingerprints()
    recorded.pop(current.version, None)
    found = max((v for v, fp in recorded.items() if fp == wanted), default=None)
    unrecorded = [v for v, fp in recorded.items() if fp is None and (found is None or v > found)]
    for version in sorted(unrecorded, reverse=True):
        try:
            snapshot = await registry.get(version)
        except (NotFound, FailedPrecondition):
            continue
        if snapshot.fingerprint == wanted:
            return version
    return found


def _warn_older(path: object, older: int, current: int, *, pruned: bool) -> None:
    """Apply on start found ``path``'s definitions in ``older``, not current: say why
    nothing is published, and how to serve them again on purpose."""
    if pruned:  # no `registry rollback` to a version that no longer exists
        again = (
            f"registry version {older} was pruned since; to serve the file's definitions again, "
            f"publish them on purpose: `featurestore apply {path}`"
        )
    else:
        again = f"to serve the file's again, run `featurestore registry rollback {older}`"
    log.warning(
        "%s holds the definitions of registry version %d, not current's (version %d): serving "
        "current without publishing the file (definitions the registry held in an older "
        "snapshot are never re-published on start: an apply, rollback or canary replaced "
        "them). Update the file to current's definitions; %s",
        path, older, current, again,
    )  # fmt: skip


async def apply_configured_definitions(config: Config, *, force: bool = False, force_flag: str = "") -> None:
    """``apply_on_start`` with a registry of its own (for commands run before serving)."""
    if not config.registry.definitions:
        return
    registry = make_registry(config)
    try:
        await apply_on_start(registry, config, force=force, force_flag=force_flag)
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
    runs: RunSink | None = None,
    on_skip: Callable[[str, str], None] | None = None,
    on_done: Callable[[MaterializeResult], None] | None = None,
    stop: asyncio.Event | None = None,
) -> list[MaterializeResult]:
    """Materialize views one after another with the stores and registry the config
    names: ``views`` (None: every view of the current snapshot that a run can load; the
    others go to ``on_skip(view, why)``), each from ``source`` or, by default, its
    definition's ``batch_source`` (a Parquet path, or a ClickHouse table read through
    ``clickhouse_dsn`` or the config's first ClickHouse store).
    ``on_start(view, source)`` may return the progress callback of that view's run;
    ``on_done(result)`` hears of each view as it is published; ``stop``, once set, ends
    the run being loaded between two batches (``Materializer``).
    Each view's run is recorded in lineage (``make_run_recorder``; into ``runs`` when given)."""
    registry = make_registry(config)
    recorder, close_recorder = await make_run_recorder(config)
    if runs is not None:
        recorder.sink = runs
    try:
        snapshot = await registry.current()
        if snapshot is None:
            raise FailedPrecondition("the registry has no snapshot: apply definitions first")
        if views is None:
            names = []
            for name, view in sorted(snapshot.definitions.views.items()):
                why = not_loadable(view, config, source)
                if why is None:
                    names.append(name)
                elif on_skip is not None:
                    on_skip(name, why)
        else:
            names = list(views)
        if source is not None and len(names) != 1:
            raise InvalidArgument("--source names one view's source: materialize one view with it")
        unknown = [v for v in names if v not in snapshot.definitions.views]
        if unknown:
            raise InvalidArgument(f"unknown feature view {unknown[0]!r}")
        for name in names:  # before any view is loaded: a config that lacks one fails the run whole
            _store_config(config, snapshot.definitions.views[name])
        results = []
        for name in names:
            definition = snapshot.definitions.views[name]
            src = source or default_source(
                definition, config, clickhouse_dsn, remedy="name one with --source"
            )
            progress = on_start(name, src) if on_start is not None else None
            dataset = (
                definition.batch_source.uri if source is None and definition.batch_source else src.describe()
            )
            one = _One(config, registry, definition, src, dataset, recorder, stop)
            results.append(await one.run(batch_rows, grace_seconds, progress, span, incremental))
            if on_done is not None:
                on_done(results[-1])
        return results
    finally:
        await registry.close()
        await close_recorder()


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


# Store kinds whose adapters keep no data versions side by side (materialize.Materializer
# refuses them): the memory store is filled from its views' files when a server starts.
_UNVERSIONED_KINDS = ("memory",)


def not_loadable(view: FeatureView, config: Config, source: OfflineSource | None) -> str | None:
    """Why a run cannot load ``view`` (None: it can), for ``--all`` to leave it out."""
    if view.stream is not None:
        return "a stream view (`featurestore stream run` feeds it from Kafka)"
    sc = config.stores.get(view.online_store)
    if sc is not None and sc.kind in _UNVERSIONED_KINDS:
        return f"its store {view.online_store!r} ({sc.kind}) keeps no data versions"
    if source is None and view.batch_source is None:
        return "it declares no batch_source"
    return None


def _store_config(config: Config, view: FeatureView) -> StoreConfig:
    sc = config.stores.get(view.online_store)
    if sc is None:
        raise FailedPrecondition(
            f"view {view.name!r} uses store {view.online_store!r}, which the config lacks"
        )
    return sc


def default_source(
    view: FeatureView, config: Config, clickhouse_dsn: str | None, *, remedy: str = ""
) -> OfflineSource:
    """The view's ``batch_source``: its Parquet path, or its warehouse table. ``remedy``:
    what the caller's user can do about a view without one (materialize: ``--source``)."""
    if view.stream is not None:
        raise InvalidArgument(
            f"view {view.name!r} is a stream view: stream views have no batch source "
            "(`featurestore stream run` feeds them from Kafka)"
        )
    bs = view.batch_source
    if bs is None:
        raise InvalidArgument(
            f"view {view.name!r} declares no batch_source" + (f": {remedy}" if remedy else "")
        )
    if bs.table is not None:
        return open_source(f"clickhouse://{bs.table}", warehouse(config, clickhouse_dsn))
    assert bs.path is not None
    return open_source(bs.path)


class _One:
    """One view's materialization, recorded as a job run (lineage/runs.py)."""

    def __init__(
        self,
        config: Config,
        registry: Registry,
        definition: FeatureView,
        source: OfflineSource,
        dataset: str,
        recorder: RunRecorder,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.config, self.registry, self.definition = config, registry, definition
        self.source, self.dataset, self.recorder, self.stop = source, dataset, recorder, stop

    async def run(
        self,
        batch_rows: int,
        grace_seconds: int,
        on_progress: Callable[[Progress], None] | None,
        span: EventTimeRange,
        incremental: bool,
    ) -> MaterializeResult:
        definition = self.definition
        sc = _store_config(self.config, definition)
        store = make_store(definition.online_store, sc, self.config)
        table = store.table_uri(definition)
        run = await self.recorder.started(
            f"materialize:{definition.name}",
            inputs=[self.dataset],
            outputs=[table],
            view=definition.name,
            schema=[(c.name, c.dtype.value) for c in (*definition.entities, *definition.features)],
        )
        await store.start()
        try:
            job = Materializer(self.registry, store, grace_seconds=grace_seconds, stop=self.stop)
            result = await job.run(
                definition.name,
                self.source,
                batch_rows=batch_rows,
                on_progress=on_progress,
                span=span,
                incremental=incremental,
            )
        except BaseException as e:
            await self.recorder.failed(run, error=f"{type(e).__name__}: {e}")
            raise
        finally:
            await store.close()
        published = None
        if not result.incremental:  # an incremental run upserts into the current version
            published = DataVersion(
                view=definition.name,
                version=result.data_version,
                rows=result.rows_written,
                published_at=now_iso(),
                fingerprint=source_fingerprint(self.source),
            )
        await self.recorder.finished(
            run, rows_read=result.rows_read, rows_written=result.rows_written, data_version=published
        )
        return result


def source_fingerprint(source: OfflineSource) -> str:
    """What identifies the source's content cheaply: for Parquet, the sha256 of every
    file's path, size and modification time (reading the data would cost a second
    scan); for a warehouse table, only its name (no cheap content identity)."""
    uri = source.describe()
    path = Path(uri.removeprefix("file://"))
    if not uri.startswith("file://") or not path.exists():
        return f"name:{uri}"
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        digest.update(
            f"{f.relative_to(path) if path.is_dir() else f.name}|{st.st_size}|{st.st_mtime_ns}\n".encode()
        )
    return f"sha256:{digest.hexdigest()[:32]}"
