"""The ``Registry`` port: versioned, immutable snapshots switched by compare-and-swap.

Two adapters implement it with the same semantics (``tests/contract/test_registry.py``
runs against both): ``file`` for the embedded default and ``etcd`` for production.

* ``publish`` writes snapshot n+1 (n = the highest existing version) and swaps
  ``current`` to it only if ``current`` still is ``expected_version``; otherwise it
  raises ``Conflict`` and the written snapshot stays unreferenced.
* Data-version pointers (one per view, for atomic materialization) are swapped the
  same way by ``swap_data_version``, and so are the watermarks of incremental
  materialization (``set_watermark``).
* ``changes`` yields whenever ``current`` or a data-version pointer may have changed;
  the server then re-reads and swaps its in-memory state off the hot path.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from featurestore.definitions.snapshot import RegistrySnapshot
from featurestore.errors import FailedPrecondition, InvalidArgument, NotFound
from featurestore.model import Definitions
from featurestore.registry.pointers import DataVersions

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Canary:
    """A gray release of one feature service: ``share`` of entities (by a stable hash
    of the request's ``entity`` key) are served from snapshot ``candidate_version``.
    ``base_version`` is the current version the canary was started against; promotion
    refuses to run if current has moved since (it would undo that change)."""

    candidate_version: int
    share: float
    base_version: int
    entity: str = ""  # the entity whose key picks the side; "" = every entity of the row

    def __post_init__(self) -> None:
        check_share(self.share)

    def to_json(self) -> bytes:
        doc: dict[str, object] = {
            "candidate_version": self.candidate_version,
            "share": self.share,
            "base_version": self.base_version,
        }
        if self.entity:
            doc["entity"] = self.entity
        return json.dumps(doc, sort_keys=True).encode()

    @staticmethod
    def from_json(raw: bytes, service: str = "?") -> Canary:
        """``FailedPrecondition`` naming ``service`` when ``raw`` is no canary record (a
        hand edit, a record of an older version, a share out of range)."""
        record = read_canary(service, raw)
        if isinstance(record, MalformedCanary):
            raise FailedPrecondition(str(record))
        return record


@dataclass(frozen=True, slots=True)
class MalformedCanary:
    """A canary record that does not parse: reported, never served; ``raw`` is what was
    read, so that deleting it (``canary abort``) is a compare-and-swap like any write."""

    service: str
    problem: str
    raw: bytes = field(repr=False)

    def __str__(self) -> str:
        return (
            f"canary record of feature service {self.service!r} is malformed: {self.problem} "
            f"(`featurestore canary abort {self.service}` deletes it)"
        )


class Canaries(dict[str, Canary]):
    """Active canaries by feature service; ``malformed``: the records that do not parse
    (their services are served from current and reported, as an unreadable candidate)."""

    def __init__(
        self, canaries: Mapping[str, Canary] | None = None, malformed: Iterable[MalformedCanary] = ()
    ) -> None:
        super().__init__(canaries or {})
        self.malformed = {m.service: m for m in malformed}


# A feature service's name (docs/definitions.md); a canary key or file named otherwise
# (an editor's backup ``ranker_v1~``, ``.swp``) is nobody's canary and is skipped.
_SERVICE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")


def is_service_name(name: str) -> bool:
    return _SERVICE_NAME.match(name) is not None


# A definitions fingerprint (sha256, hex): the name of its key or file in the index of
# published fingerprints (``Registry.published_with``), so nothing else may become one.
_FINGERPRINT = re.compile(r"[0-9a-f]{64}\Z")


def is_fingerprint(value: str) -> bool:
    return _FINGERPRINT.match(value) is not None


def check_fingerprint(fingerprint: str) -> str:
    if not is_fingerprint(fingerprint):
        raise InvalidArgument(f"not a definitions fingerprint: {fingerprint[:80]!r}")
    return fingerprint


def read_canaries(records: Iterable[tuple[str, bytes]]) -> Canaries:
    """The canaries of ``(service, record)`` pairs as read from a backend."""
    good: dict[str, Canary] = {}
    bad = []
    for service, raw in records:
        if not is_service_name(service):
            continue
        record = read_canary(service, raw)
        if isinstance(record, MalformedCanary):
            bad.append(record)
        else:
            good[service] = record
    return Canaries(good, bad)


def read_canary(service: str, raw: bytes) -> Canary | MalformedCanary:
    """The record ``raw`` of ``service``'s canary, or why it is none. Versions must be
    JSON integers (1.9 is not coerced to 1, 1e999 is not infinity), the share a number."""
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError(f"a JSON object was expected, not {type(doc).__name__}")
        entity = doc.get("entity", "")
        if not isinstance(entity, str):
            raise TypeError(f"field 'entity' must be a string, not {type(entity).__name__}")
        return Canary(
            _field(doc, "candidate_version", int),
            _field(doc, "share", float),
            _field(doc, "base_version", int),
            entity,
        )
    except KeyError as e:
        problem = f"field {e} is missing"
    except InvalidArgument as e:  # the share (Canary.__post_init__)
        problem = e.message
    # Anything else a hand-written value raises here (JSONDecodeError and
    # UnicodeDecodeError are ValueErrors; RecursionError of a record nested too deep) is
    # a malformed record: it must never escape into load_state or `canary abort`.
    except Exception as e:
        problem = f"{type(e).__name__}: {e}"
    return MalformedCanary(service, problem[:200], raw)


def _field(doc: dict[str, Any], name: str, kind: type[int] | type[float]) -> Any:
    """``doc[name]`` as ``kind``: an int for int, an int or float for float (never a bool,
    a string or anything coerced)."""
    value = doc[name]
    allowed: tuple[type, ...] = (int,) if kind is int else (int, float)
    if type(value) not in allowed:
        raise TypeError(
            f"field {name!r} must be a JSON {'integer' if kind is int else 'number'}, got {value!r}"[:120]
        )
    return kind(value)


def check_share(share: float) -> None:
    if not 0.0 < share <= 1.0:  # (NaN fails too)
        raise InvalidArgument(f"canary share must be in (0, 1], got {share}")


def prunable(versions: Iterable[int], current: int | None, canaries: Canaries, keep: int) -> list[int]:
    """What ``registry prune --keep N`` deletes of ``versions``: all but current, each
    canary's candidate and base, and the newest ``keep``. Refused while a canary record
    is malformed: the versions it protects are unknown."""
    if keep < 1:
        raise InvalidArgument(f"prune must keep at least the newest snapshot, got --keep {keep}")
    for bad in canaries.malformed.values():
        raise FailedPrecondition(f"nothing pruned: {bad}")
    ordered = sorted(versions)
    kept = (
        set(ordered[-keep:])
        | {current}
        | {v for c in canaries.values() for v in (c.candidate_version, c.base_version)}
    )
    return [v for v in ordered if v not in kept]


@dataclass(frozen=True, slots=True)
class Watermark:
    """How far incremental materialization of a view has read its batch source: the
    newest event time loaded (epoch µs) into data version ``data_version``. A watermark
    of another data version than the current one is stale (a full run replaced the data
    it describes) and the next incremental run starts over with a full one.

    ``start_us``: where the full run that loaded the version began (its ``--start``,
    inclusive; None: the whole source, or a watermark recorded before this field
    existed). Keys whose latest row is older were never loaded into the version
    (the consistency check's ``not_loaded``). Stored only when set, so a watermark
    without it is written as before, and one written before reads as ``None``."""

    data_version: int
    event_time_us: int
    start_us: int | None = None

    def to_json(self) -> bytes:
        doc: dict[str, int] = {"data_version": self.data_version, "event_time_us": self.event_time_us}
        if self.start_us is not None:
            doc["start_us"] = self.start_us
        return json.dumps(doc).encode()

    @staticmethod
    def from_json(raw: bytes) -> Watermark:
        doc = json.loads(raw)
        start = doc.get("start_us")
        return Watermark(
            int(doc["data_version"]), int(doc["event_time_us"]), int(start) if start is not None else None
        )


def read_watermarks(found: Iterable[tuple[str, bytes]]) -> dict[str, Watermark]:
    """(view, stored watermark) pairs as watermarks. One that cannot be parsed (written
    by hand, truncated) is logged and left out: the server's freshness gauge is then
    absent for that view, and serving never waits on it (``featurestore materialize``
    still refuses it, through ``watermark``)."""
    out = {}
    for view, raw in found:
        try:
            out[view] = Watermark.from_json(raw)
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as e:  # (1e400: int(inf))
            log.warning("watermark of view %s is malformed, left out: %s: %s", view, type(e).__name__, e)
    return out


@dataclass(frozen=True, slots=True)
class RegistryHealth:
    connected: bool
    seconds_since_contact: float  # how stale the served view of the registry may be


class Registry(Protocol):
    @property
    def project(self) -> str: ...

    async def current(self) -> RegistrySnapshot | None:
        """The snapshot ``current`` points to, or None when nothing was applied."""
        ...

    async def get(self, version: int) -> RegistrySnapshot:
        """One stored snapshot; ``NotFound`` when there is no such version."""
        ...

    async def versions(self) -> list[int]:
        """Every stored snapshot version, ascending."""
        ...

    async def published_with(self, fingerprint: str) -> int | None:
        """The newest version ever published or staged with definitions of
        ``fingerprint``, from an index written with each snapshot and never pruned (the
        version may be pruned since); None: not in the index (never published, or
        published before the index existed)."""
        ...

    async def snapshot_fingerprints(self) -> dict[int, str | None]:
        """Every stored snapshot version, ascending, with the fingerprint recorded beside
        it (a small record written with the snapshot and pruned with it), read without
        reading any snapshot: a list of keys and a prefix read of the records. None: the
        snapshot has no record (written by a release before the records existed, e.g.
        during a rolling upgrade; or rewritten by hand since): read it to know."""
        ...

    async def publish(
        self, definitions: Definitions, *, expected_version: int | None, message: str = ""
    ) -> RegistrySnapshot:
        """Write snapshot n+1 and make it current iff current == expected_version."""
        ...

    async def stage(self, definitions: Definitions, *, message: str = "") -> RegistrySnapshot:
        """Write snapshot n+1 without making it current (a canary candidate)."""
        ...

    async def set_current(self, version: int, *, expected_version: int | None) -> None:
        """Point current at an existing snapshot iff current == expected_version."""
        ...

    async def canaries(self) -> Canaries:
        """Active canaries by feature service, and the records that do not parse."""
        ...

    async def set_canary(
        self, service: str, canary: Canary | None, *, expected: Canary | MalformedCanary | None
    ) -> None:
        """Start (or, with None, end) a service's canary iff it currently is ``expected``
        (a ``MalformedCanary`` as read: deleting a record that does not parse)."""
        ...

    async def prune(self, keep: int, *, dry_run: bool = False) -> list[int]:
        """Delete the snapshots ``prunable`` names, in one step that fails with
        ``Conflict`` (deleting nothing) if current or a canary changed meanwhile;
        returns the versions deleted (with ``dry_run``: that would be). The index of
        published fingerprints (``published_with``) is never pruned; each snapshot's record
        (``snapshot_fingerprints``) is deleted with it."""
        ...

    async def promote(self, service: str, canary: Canary) -> None:
        """End ``service``'s canary by making its candidate current, in one atomic step,
        iff the canary still is ``canary`` and current still is its ``base_version``
        (``Conflict`` otherwise, and nothing changes)."""
        ...

    def health(self) -> RegistryHealth: ...

    async def data_versions(self) -> DataVersions:
        """Current data version of every view that has one; a view whose pointer is
        malformed is left out (logged, and listed in ``malformed``)."""
        ...

    async def swap_data_version(self, view: str, *, expected: int, new: int) -> None:
        """Point ``view`` at data version ``new`` iff it is at ``expected`` (0 = unset)."""
        ...

    async def allocate_data_version(self, view: str) -> int:
        """A data version of ``view`` above its current one that no caller was given
        before (a counter moved by compare-and-swap), so concurrent materializations
        never write into the same version."""
        ...

    async def watermark(self, view: str) -> Watermark | None:
        """The view's incremental-materialization watermark, None when it has none."""
        ...

    async def set_watermark(self, view: str, mark: Watermark, *, expected: Watermark | None) -> None:
        """Replace the view's watermark iff it currently is ``expected`` (None = unset);
        ``Conflict`` otherwise."""
        ...

    async def watermarks(self) -> dict[str, Watermark]:
        """Every view's watermark in one read (``read_watermarks``: one that cannot be
        parsed is left out), for servers to export how fresh each view's data is."""
        ...

    async def data_state(self) -> tuple[DataVersions, dict[str, Watermark]]:
        """``data_versions()`` and ``watermarks()`` in one read (etcd: one range at one
        revision, so no watermark is newer than the data versions it is served with)."""
        ...

    def changes(self) -> AsyncIterator[None]:
        """Yields once as soon as it is watching (so the caller re-reads whatever
        changed before the watch began), then after anything under the project's
        prefix may have changed."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RegistryState:
    """What a server swaps in: current snapshot, data versions, canaries and their
    candidate snapshots. ``unreadable_canaries``: why the candidate of each canary left
    out could not be read (deleted, corrupted); its service is served from current.
    ``watermarks``: each view's materialization watermark (the freshness gauges).
    ``malformed_data_versions``: why each view left out of ``data_versions`` was."""

    snapshot: RegistrySnapshot | None
    data_versions: Mapping[str, int]
    canaries: Mapping[str, tuple[Canary, RegistrySnapshot]]
    unreadable_canaries: Mapping[str, str] = field(default_factory=dict)
    watermarks: Mapping[str, Watermark] = field(default_factory=dict)
    malformed_data_versions: Mapping[str, str] = field(default_factory=dict)


async def load_state(registry: Registry) -> RegistryState:
    """The registry's state for a server. Canaries are read before current: a promotion
    in between then leaves the candidate current with its canary still listed (served
    the same either way), never the old current without the canary. A candidate that
    cannot be read never holds back current (the canary is reported, not served)."""
    active = await registry.canaries()
    snapshot = await registry.current()
    data_versions, watermarks = await registry.data_state()
    canaries = {}
    unreadable = {
        service: f"canary record is malformed: {m.problem}" for service, m in active.malformed.items()
    }
    for service, canary in active.items():
        try:
            canaries[service] = (canary, await registry.get(canary.candidate_version))
        except (NotFound, FailedPrecondition) as e:  # FailedPrecondition: SnapshotCorrupted
            unreadable[service] = f"candidate version {canary.candidate_version}: {type(e).__name__}: {e}"
    malformed = {view: e.message for view, e in data_versions.malformed.items()}
    return RegistryState(snapshot, data_versions, canaries, unreadable, watermarks, malformed)
