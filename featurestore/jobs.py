"""One-shot jobs the CLI runs against the configured registry and stores: publish the
configured definitions, materialize a view. Each builds what it needs from
``factories`` and closes it again."""

from __future__ import annotations

import logging
from collections.abc import Callable

from featurestore.config import Config
from featurestore.definitions.parser import load_definitions
from featurestore.definitions.snapshot import RegistrySnapshot, fingerprint
from featurestore.derived.compiler import cache_dir, check_definitions
from featurestore.errors import Conflict, FailedPrecondition, InvalidArgument
from featurestore.factories import make_registry, make_store
from featurestore.materialize import Materializer, MaterializeResult, Progress
from featurestore.offline import OfflineSource
from featurestore.registry.base import Registry

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
    view: str,
    source: OfflineSource,
    *,
    batch_rows: int,
    grace_seconds: int,
    on_progress: Callable[[Progress], None] | None = None,
) -> MaterializeResult:
    """Materialize one view with the stores and registry the config names."""
    registry = make_registry(config)
    try:
        snapshot = await registry.current()
        if snapshot is None:
            raise FailedPrecondition("the registry has no snapshot: apply definitions first")
        definition = snapshot.definitions.views.get(view)
        if definition is None:
            raise InvalidArgument(f"unknown feature view {view!r}")
        sc = config.stores.get(definition.online_store)
        if sc is None:
            raise FailedPrecondition(
                f"view {view!r} uses store {definition.online_store!r}, which the config lacks"
            )
        store = make_store(definition.online_store, sc, config)
        await store.start()
        try:
            job = Materializer(registry, store, grace_seconds=grace_seconds)
            return await job.run(view, source, batch_rows=batch_rows, on_progress=on_progress)
        finally:
            await store.close()
    finally:
        await registry.close()
