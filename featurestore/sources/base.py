"""The ``OnlineSource`` port: what the join engine needs from an online store.

A store serves several feature views. The engine calls :meth:`OnlineSource.read`
once per store per request with every view that store serves, so a store can batch
them (Redis pipelines one MGET per view into a single round trip). Results are
columnar over the *unique* keys the engine passes; the engine maps them back to rows.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import pyarrow as pa

from featurestore.errors import Unavailable
from featurestore.model import FeatureView

# An entity key as the engine passes it: the key value for a single-entity view,
# a tuple of the parts (in the view's entity order) for a composite key.
EntityKey = int | str | tuple[int | str, ...]


class ViewQuery(NamedTuple):
    view: FeatureView
    keys: Sequence[EntityKey]  # unique keys
    features: Sequence[int]  # indices into view.features, in the order wanted back
    data_version: int


class ViewRead(NamedTuple):
    """Columnar answer for one ViewQuery, aligned with its keys.

    ``columns[j][i]`` is the value of feature ``query.features[j]`` for ``keys[i]``.
    Where ``found[i]`` is false the values and timestamp are meaningless: the engine
    nulls them, so sources need not. ``unavailable``, when given, marks keys that
    could not be read at all (the cache answered the others while the store failed);
    those keys have ``found`` false.
    """

    found: list[bool]
    event_ts_us: list[int]
    columns: list[list[Any]]
    unavailable: list[bool] | None = None


class DataMissing(Unavailable):
    """The store answers, but the data of a data version the registry publishes is not
    in it (Redis restarted empty or flushed, a table dropped). Returned in a read's
    slot: NOT_FOUND for every key would be a wrong answer."""


class SourceState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DEGRADED = "degraded"  # answering, but something is wrong (e.g. one node down)
    DOWN = "down"


@runtime_checkable
class OnlineSource(Protocol):
    """An online store. Implementations: memory, redis, clickhouse; all pass
    ``tests/contract/test_online_source.py``."""

    @property
    def name(self) -> str:
        """The store name from the configuration (what views refer to)."""
        ...

    @property
    def kind(self) -> str:
        """``memory``, ``redis`` or ``clickhouse``."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def prepare(self, views: Sequence[FeatureView]) -> None:
        """Get ready to serve these views (load data, create tables). Called off the
        hot path before a registry snapshot naming them goes live, with every view
        (by name and layout) the store serves until the next call: those live now and
        those about to be. Anything held for other views may be let go."""
        ...

    async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
        """Read every query; a per-view failure is returned in its slot, not raised.

        Must stop promptly when cancelled: the engine enforces the request deadline
        by cancelling the read."""
        ...

    async def write(
        self, view: FeatureView, rows: pa.Table, data_version: int, *, create: bool = True
    ) -> int:
        """Upsert rows shaped like :func:`featurestore.rows.view_schema`
        into a data version; returns the number of rows written. ``create=False`` (a
        push): a version past 0 that the store does not hold is not created but refused
        with ``DataMissing``, where the store can tell (Redis: the version's marker;
        ClickHouse: its table): only a materialization creates a version, and a push
        into one the store lost would otherwise bring it back holding only the pushed
        rows (every other key NOT_FOUND instead of UNAVAILABLE, the loss unreported)."""
        ...

    def table_uri(self, view: FeatureView) -> str:
        """Where the view's online values live, e.g. ``redis://fs/user_profile``."""
        ...

    def state(self) -> SourceState:
        """Whether the store answers at all (reachability, not the data it holds)."""
        ...

    def serving(self, versions: Mapping[str, int]) -> None:
        """The data version of every view of this store the server serves now; called
        after each registry swap. A store that can lose data behind the server's back
        checks these versions in its health probe (cheaply: no row scan). Version 0
        (never materialized) is not checked: an empty version 0 is a valid state."""
        ...

    def missing(self) -> Mapping[str, str]:
        """Views whose served data version the store found missing, on a read (that
        read returned ``DataMissing``) or by its probe, with the reason; empty when
        everything served is there. Cleared when the data is back or the view moves to
        another data version (re-materialized). Stores that cannot lose data while the
        process runs (memory) always report nothing."""
        ...


@runtime_checkable
class VersionedStore(Protocol):
    """A store that keeps data versions side by side (materialization needs it)."""

    async def mark_version(self, view: FeatureView, data_version: int) -> None:
        """Create one data version, empty, before its rows are loaded (a version that
        gets no rows exists too: its keys are then NOT_FOUND, not UNAVAILABLE). Only a
        materialization creates a version; a write of rows into a version past 0 that the
        store does not hold (lost) is refused with ``DataMissing`` where the store can
        tell (Redis: its marker; ClickHouse: its table)."""
        ...

    async def has_version(self, view: FeatureView, data_version: int) -> bool:
        """Whether the store holds anything of one data version (cheap: no row scan)."""
        ...

    async def drop_version(self, view: FeatureView, data_version: int) -> int:
        """Delete every row of one data version; returns how many were deleted."""
        ...

    async def expire_version(self, view: FeatureView, data_version: int, seconds: int) -> int:
        """Let every row of one data version expire after ``seconds``."""
        ...

    async def unexpired_versions(self, view: FeatureView, below: int) -> list[int]:
        """Versions of ``view`` under ``below`` the store holds something of that is not
        set to expire or be dropped (what a run killed after publishing left)."""
        ...


@runtime_checkable
class ProfileStore(Protocol):
    """A store that keeps a reference profile (``featurestore.quality.profile``) with each
    data version, so a swap of data version swaps the reference drift is tested against.
    Dropping or expiring a version drops or expires its profile with it."""

    async def write_profile(self, view: FeatureView, data_version: int, blob: bytes) -> None:
        """Store the serialized profile of one data version (replacing any)."""
        ...

    async def read_profile(self, view: FeatureView, data_version: int) -> bytes | None:
        """The serialized profile of one data version, None when it has none."""
        ...


@runtime_checkable
class LateAnswers(Protocol):
    """A store that can still answer part of a read the engine gave up on at the
    deadline (the row cache: its rows, while the store behind it hangs). A store that
    fails answers through ``read``; one that hangs never returns, and its read is
    cancelled as a whole."""

    def answer_late(self, queries: Sequence[ViewQuery], err: BaseException) -> list[ViewRead | BaseException]:
        """Per query, what it holds without a store read (the keys it lacks marked
        ``unavailable``), or ``err`` when it holds none of them. Synchronous: called
        after the deadline, it must not wait."""
        ...
