"""Preparing a serving state: the stores get every view of every snapshot it will serve
(loads memory data, checks layouts), the derived kernels compile off the event loop.

A canary's candidate is prepared after current, one at a time: a candidate that cannot be
served here (a store this server lacks, data that does not load, a kernel that does not
compile) is left out, its service served from current, and the cause is reported to the
caller; it never holds back current.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path

from featurestore.definitions.snapshot import RegistrySnapshot
from featurestore.derived.compiler import Kernel, default_cache_dir, kernels_for
from featurestore.errors import FailedPrecondition
from featurestore.model import FeatureView
from featurestore.plan import CanaryRoute, ServingState, same_snapshot
from featurestore.registry.base import Canary, RegistryState
from featurestore.sources.base import OnlineSource


async def prepare_views(stores: Mapping[str, OnlineSource], snapshots: Iterable[RegistrySnapshot]) -> None:
    """Hand every store the complete set of views it serves until the next call: those
    of the snapshots being served now and those about to be. A store may then drop
    whatever it holds for any other view layout. Fails naming a missing store."""
    by_store: dict[str, dict[tuple[str, str], FeatureView]] = {name: {} for name in stores}
    for snapshot in snapshots:
        for view in snapshot.definitions.views.values():
            if view.serving_store not in stores:
                raise FailedPrecondition(
                    f"feature view {view.name!r} uses online store {view.online_store!r}, "
                    f"which this server does not configure"
                    + (" as a tile store (memory or standalone redis)" if view.stream is not None else "")
                    + f" (stores: {', '.join(sorted(s for s in stores if ':' not in s))})"
                )
            by_store[view.serving_store][(view.name, view.layout)] = view
    for name, views in by_store.items():
        await stores[name].prepare(list(views.values()))


async def _kernels(
    snapshot: RegistrySnapshot, previous: ServingState | None, directory: Path | None
) -> dict[str, Kernel]:
    if previous is not None and same_snapshot(previous.snapshot, snapshot):
        return dict(previous.kernels)
    return await kernels_for(snapshot.definitions, directory or default_cache_dir())


async def serving_state(
    stores: Mapping[str, OnlineSource],
    reg: RegistryState,
    previous: ServingState | None,
    kernel_dir: Path | None = None,
    unserved: dict[str, str] | None = None,
) -> ServingState:
    """Prepare the stores and compile the derived kernels (off the event loop) for every
    snapshot the state will serve, then build it. Fails when current cannot be served;
    a canary that cannot is left out of the state, its cause put in ``unserved``
    (by feature service). A view whose data pointer is malformed keeps the data version
    it is served at (``keep_served_data_versions``)."""
    reg = keep_served_data_versions(reg, previous)
    assert reg.snapshot is not None
    serving_now = (
        []
        if previous is None
        else [previous.snapshot, *(c.state.snapshot for c in previous.canaries.values())]
    )
    prepared = [*serving_now, reg.snapshot]
    # Kernels load while the stores prepare (~0.3 s of numba import and cache load off
    # the demo's start-up; they share nothing).
    kernels_task = asyncio.ensure_future(_kernels(reg.snapshot, previous, kernel_dir))
    try:
        await prepare_views(stores, prepared)
    except BaseException:
        kernels_task.cancel()
        with contextlib.suppress(BaseException):
            await kernels_task
        raise
    canaries: dict[str, CanaryRoute] = {}
    for service, (canary, candidate) in reg.canaries.items():
        try:
            await prepare_views(stores, [*prepared, candidate])
            canaries[service] = await _canary_route(canary, candidate, reg, previous, service, kernel_dir)
        except Exception as e:
            if unserved is not None:
                unserved[service] = f"candidate version {candidate.version}: {type(e).__name__}: {e}"
            continue
        prepared.append(candidate)
    kernels = await kernels_task
    if previous is None:
        return ServingState(reg.snapshot, reg.data_versions, canaries, kernels=kernels)
    return previous.successor(reg.snapshot, reg.data_versions, canaries, kernels)


def keep_served_data_versions(reg: RegistryState, previous: ServingState | None) -> RegistryState:
    """``reg`` with each view whose data pointer is malformed (left out of its data
    versions) at the data version ``previous`` serves it at, if any: a pointer edited
    into no number does not move a view's reads to no data version."""
    if previous is None or not reg.malformed_data_versions:
        return reg
    served = previous.data_versions
    kept = {view: served[view] for view in reg.malformed_data_versions if view in served}
    return dataclasses.replace(reg, data_versions={**reg.data_versions, **kept})


async def _canary_route(
    canary: Canary,
    candidate: RegistrySnapshot,
    reg: RegistryState,
    previous: ServingState | None,
    service: str,
    kernel_dir: Path | None,
) -> CanaryRoute:
    old = previous.canaries.get(service) if previous is not None else None
    prior = old.state if old is not None else None
    cand_kernels = await _kernels(candidate, prior, kernel_dir)
    cand_state = (
        prior.successor(candidate, reg.data_versions, {}, cand_kernels)
        if prior is not None
        else ServingState(candidate, reg.data_versions, kernels=cand_kernels)
    )
    return CanaryRoute(canary.share, canary.entity, cand_state)
