"""Registry operations for feature engineers: apply, history, rollback, canary.

Every change goes through the port's compare-and-swap, so concurrent operators
cannot overwrite each other: the loser gets ``Conflict`` and is told to re-read.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from featurestore.definitions.diff import Change, diff
from featurestore.definitions.snapshot import RegistrySnapshot, fingerprint
from featurestore.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from featurestore.model import Definitions
from featurestore.registry.base import Canary, MalformedCanary, Registry, check_share

# `registry history` lists the newest this many snapshots unless told otherwise: each
# is one read of up to 1.5 MB, and the list is for picking a recent rollback target.
HISTORY_LIMIT = 20


class Incompatible(FailedPrecondition):
    """Definitions that change what stored rows mean (a dtype, a view's keys), refused
    unless forced. ``changes``: the whole diff refused (the CLI prints it)."""

    def __init__(self, message: str, changes: list[Change] | None = None) -> None:
        super().__init__(message)
        self.changes = changes or []


def refuse_incompatible(changes: list[Change]) -> None:
    bad = [c for c in changes if c.incompatible]
    if bad:
        # Derived views are computed per request, never stored: their incompatible changes
        # (a request field's dtype, a new request field) are the callers' to follow.
        stored = any(c.kind != "derived_view" for c in bad)
        then = (
            "then re-materialize the views"
            if stored
            else "callers must then send the request fields as declared"
        )
        raise Incompatible(
            "incompatible changes: "
            + "; ".join(f"{c.kind} {c.name}: {', '.join(c.incompatible)}" for c in bad)
            + f" (re-run with --force to apply anyway, {then})",
            changes,
        )


@dataclass(frozen=True, slots=True)
class HistoryRow:
    version: int
    snapshot: RegistrySnapshot | None  # None: it cannot be read (``problem`` says why)
    current: bool
    problem: str = ""


@dataclass(frozen=True, slots=True)
class ApplyResult:
    changes: list[Change]
    snapshot: RegistrySnapshot | None  # None: nothing applied (no change, or dry run)
    previous: int | None


class RegistryAdmin:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def plan_apply(self, definitions: Definitions) -> tuple[RegistrySnapshot | None, list[Change]]:
        self._check_project(definitions)
        current = await self.registry.current()
        if current is not None and current.fingerprint == fingerprint(definitions):
            return current, []
        return current, diff(current.definitions if current else None, definitions)

    async def apply(
        self, definitions: Definitions, *, force: bool = False, dry_run: bool = False, message: str = ""
    ) -> ApplyResult:
        current, changes = await self.plan_apply(definitions)
        previous = current.version if current else None
        if not changes or dry_run:
            return ApplyResult(changes, None, previous)
        if not force:
            refuse_incompatible(changes)
        snap = await self.registry.publish(definitions, expected_version=previous, message=message)
        return ApplyResult(changes, snap, previous)

    async def history(self, limit: int = HISTORY_LIMIT) -> tuple[list[HistoryRow], int]:
        """The newest ``limit`` snapshots (0: all), newest first, and how many older ones
        were left out. Only those are read. One that cannot be read (corrupted, deleted
        meanwhile) is a row saying why: the others are what an operator needs to pick a
        rollback target. A corrupted current fails (as everything reading current does)."""
        if limit < 0:
            raise InvalidArgument(f"--limit must be 0 (every snapshot) or more, got {limit}")
        current = await self.registry.current()
        versions = sorted(await self.registry.versions(), reverse=True)
        shown = versions[:limit] if limit else versions
        rows = []
        for v in shown:
            is_current = current is not None and current.version == v
            try:
                rows.append(HistoryRow(v, await self.registry.get(v), is_current))
            except (NotFound, FailedPrecondition) as e:  # FailedPrecondition: SnapshotCorrupted
                rows.append(HistoryRow(v, None, is_current, f"{e.code.value}: {e.message}"))
        return rows, len(versions) - len(shown)

    async def prune(self, keep: int, *, dry_run: bool = False) -> list[int]:
        """Delete old snapshots: all but current, every canary's candidate and base, and
        the newest ``keep`` (the registry port does it by compare-and-swap)."""
        return await self.registry.prune(keep, dry_run=dry_run)

    async def diff(self, a: int, b: int) -> list[Change]:
        return diff((await self.registry.get(a)).definitions, (await self.registry.get(b)).definitions)

    async def rollback(self, version: int, *, force: bool = False) -> ApplyResult:
        """Publish the definitions of an old snapshot as the new current (n+1)."""
        old = await self.registry.get(version)
        return await self.apply(old.definitions, force=force, message=f"rollback to version {version}")

    # -- canary ----------------------------------------------------------------------

    async def canary_start(
        self,
        service: str,
        definitions: Definitions,
        share: float,
        message: str = "",
        entity: str | None = None,
        force: bool = False,
    ) -> Canary:
        self._check_project(definitions)
        check_share(share)  # before anything is staged
        if service not in definitions.services:
            raise NotFound(f"the candidate definitions have no feature service {service!r}")
        entity = routing_entity(definitions, service, entity)
        current = await self.registry.current()
        if current is None:
            raise FailedPrecondition("the registry has no current snapshot to canary against")
        if service not in current.definitions.services:
            raise NotFound(f"feature service {service!r} is not in the current snapshot: apply it instead")
        if not force:  # the candidate may be promoted: the same guard as apply
            refuse_incompatible(diff(current.definitions, definitions))
        active = await self.registry.canaries()
        if service in active.malformed:
            raise FailedPrecondition(str(active.malformed[service]))
        existing = active.get(service)
        if existing is not None:
            raise Conflict(
                f"feature service {service!r} already has a canary (candidate version {existing.candidate_version}): "
                "promote or abort it first"
            )
        candidate = await self.registry.stage(
            definitions, message=message or f"canary candidate for {service}"
        )
        canary = Canary(candidate.version, share, current.version, entity)
        await self.registry.set_canary(service, canary, expected=None)
        return canary

    async def canary_promote(self, service: str) -> Canary:
        """Make the candidate current and end the canary, in one atomic registry step."""
        canary = await self._canary(service)
        current = await self.registry.current()
        if current is not None and current.version == canary.candidate_version:
            # promoted already, but its canary outlived it (a crash of the file
            # registry between its two writes): end it
            await self.registry.set_canary(service, None, expected=canary)
            return canary
        if current is None or current.version != canary.base_version:
            raise Conflict(
                f"current moved from version {canary.base_version} to "
                f"{current.version if current else None} since the canary started: promoting would undo that; "
                "abort the canary, re-read the registry and start it again"
            )
        await self.registry.promote(service, canary)
        return canary

    async def canary_abort(self, service: str) -> Canary | MalformedCanary:
        """End the canary; a malformed record is deleted as it was read (by CAS too)."""
        active = await self.registry.canaries()
        canary = active.get(service) or active.malformed.get(service)
        if canary is None:
            raise NotFound(f"feature service {service!r} has no canary")
        await self.registry.set_canary(service, None, expected=canary)
        return canary

    async def _canary(self, service: str) -> Canary:
        active = await self.registry.canaries()
        if service in active.malformed:
            raise FailedPrecondition(str(active.malformed[service]))
        canary = active.get(service)
        if canary is None:
            raise NotFound(f"feature service {service!r} has no canary")
        return canary

    def _check_project(self, definitions: Definitions) -> None:
        if definitions.project != self.registry.project:
            raise FailedPrecondition(
                f"the definitions are for project {definitions.project!r}, the registry for {self.registry.project!r}"
            )


def routing_entity(definitions: Definitions, service: str, wanted: str | None) -> str:
    """The entity whose key splits a service's canary: ``wanted`` when given (it must key
    the service), else the one keying most of the service's features, so that, say, a
    user stays on one side whatever items a request lists with it."""
    counts: Counter[str] = Counter()
    for ref in definitions.services[service].features:
        keys = {e.name for r in definitions.stored_inputs(ref) for e in definitions.views[r.view].entities}
        counts.update(keys)
    if not counts:
        raise InvalidArgument(
            f"feature service {service!r} reads no stored feature: no entity to split a canary by"
        )
    if wanted is not None:
        if wanted not in counts:
            raise InvalidArgument(
                f"entity {wanted!r} keys no feature of service {service!r} "
                f"(its entities: {', '.join(sorted(counts))})"
            )
        return wanted
    return min(counts, key=lambda name: (-counts[name], name))
