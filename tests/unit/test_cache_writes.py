"""Writes through the row cache: a read that overlapped a write of its rows fills
nothing, until the store's write has ended, even when its caller gave up on it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pytest

from featurestore.cache import MAX_ABANDONED, CachedSource, LRUCache
from featurestore.errors import Unavailable
from featurestore.fence import WriteFence
from featurestore.model import DType, Entity, Feature, FeatureView
from featurestore.rows import view_schema
from featurestore.sources.base import ViewQuery, ViewRead
from featurestore.sources.memory import MemorySource

U = Entity("user_id", DType.INT64)
V = FeatureView("v", (U,), (Feature("a", DType.INT64), Feature("b", DType.STRING)))
HANG_GUARD = 10.0  # seconds: only against a hang, never reached when the test passes


def rows(a: int) -> pa.Table:
    schema = view_schema(V)
    ts = schema.field("event_timestamp").type
    return pa.table(
        {"user_id": [1], "a": [a], "b": ["z"], "event_timestamp": pa.array([7], ts)}, schema=schema
    )


class ThreadedStore(MemorySource):
    """A store whose write, like the ClickHouse store's insert (sources/clickhouse/pool.py),
    runs on a thread that cancelling the caller does not stop: the rows land when the
    thread is let go (``gate``), whether anyone still waits for them or not. What is
    tested is how the cache deals with such a write, so a real ClickHouse is not needed
    (and the embedded engine's insert cannot be held halfway to cancel its caller)."""

    def __init__(self) -> None:
        super().__init__("threaded")
        self.stored: dict[Any, int] = {1: 10}
        self.reads = 0
        self.started, self.gate, self.landed = threading.Event(), threading.Event(), threading.Event()
        self._thread = ThreadPoolExecutor(1)

    async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
        self.reads += 1
        out: list[ViewRead | BaseException] = []
        for q in queries:
            values = [self.stored.get(k) for k in q.keys]
            columns: list[list[Any]] = [values, [None if v is None else "z" for v in values]]
            out.append(
                ViewRead(
                    found=[v is not None for v in values],
                    event_ts_us=[7] * len(values),  # meaningless where not found
                    columns=[columns[j] for j in q.features],
                )
            )
        return out

    async def write(
        self, view: FeatureView, table: pa.Table, data_version: int, *, create: bool = True
    ) -> int:
        def insert() -> None:
            self.started.set()
            self.gate.wait(HANG_GUARD)
            self.stored.update(zip(table["user_id"].to_pylist(), table["a"].to_pylist(), strict=True))
            self.landed.set()

        await asyncio.wrap_future(self._thread.submit(insert))
        return int(table.num_rows)

    async def close(self) -> None:
        self.gate.set()
        self._thread.shutdown(wait=True)


async def value(src: CachedSource) -> Any:
    [r] = await src.read([ViewQuery(V, [1], [0], 1)])
    assert isinstance(r, ViewRead)
    return r.columns[0][0]


async def test_a_push_given_up_at_its_deadline_never_leaves_a_stale_row_cached() -> None:
    store = ThreadedStore()
    src = CachedSource(store, LRUCache(100, 30))
    try:
        assert await value(src) == 10  # cached
        push = asyncio.create_task(src.write(V, rows(11), 1))
        assert await asyncio.to_thread(store.started.wait, HANG_GUARD)
        push.cancel()  # the push's deadline: its caller gives up, the insert goes on
        with pytest.raises(asyncio.CancelledError):
            await push
        assert await value(src) == 10  # not landed yet: the store's old row ...
        store.gate.set()
        assert await asyncio.to_thread(store.landed.wait, HANG_GUARD)
        assert await value(src) == 11  # ... was not cached: once landed, the new row is served
    finally:
        await src.close()


class HangingStore(ThreadedStore):
    """A store whose writes wait until let go, and which a cancelled write stops."""

    def __init__(self, expected: int) -> None:
        super().__init__()
        self.expected = expected
        self.entered: list[int] = []
        self.written: list[int] = []
        self.stopped: list[int] = []
        self.all_in, self.release, self.one_stopped = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self.all_written = asyncio.Event()

    async def write(
        self, view: FeatureView, table: pa.Table, data_version: int, *, create: bool = True
    ) -> int:
        a = table["a"][0].as_py()
        self.entered.append(a)
        if len(self.entered) == self.expected:
            self.all_in.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.stopped.append(a)
            self.one_stopped.set()
            raise
        self.written.append(a)
        if len(self.written) == self.expected - 1:
            self.all_written.set()
        return int(table.num_rows)


async def test_writes_given_up_on_go_on_to_their_end_but_only_so_many_per_store() -> None:
    n = MAX_ABANDONED + 1
    store = HangingStore(n)
    src = CachedSource(store, LRUCache(100, 30))
    pushes = [asyncio.create_task(src.write(V, rows(i), 1)) for i in range(n)]
    await asyncio.wait_for(store.all_in.wait(), HANG_GUARD)
    for push in pushes:  # every caller gives up, in order
        push.cancel()
    await asyncio.gather(*pushes, return_exceptions=True)
    await asyncio.wait_for(store.one_stopped.wait(), HANG_GUARD)
    assert store.stopped == [n - 1]  # one too many: stopped where it was, as a cancelled write
    store.release.set()
    await asyncio.wait_for(store.all_written.wait(), HANG_GUARD)  # the others all went on
    assert sorted(store.written) == list(range(n - 1))
    await src.close()


async def test_a_write_given_up_on_that_never_ends_is_stopped_after_a_ttl_and_reads_fill_the_cache_again() -> (
    None
):
    store = HangingStore(1)  # its write returns only if let go: never, here
    src = CachedSource(store, LRUCache(100, 0.2, clock=lambda: 0.0))  # rows never expire; 0.2 s: the limit
    try:
        assert await value(src) == 10
        push = asyncio.create_task(src.write(V, rows(11), 1))
        await asyncio.wait_for(store.all_in.wait(), HANG_GUARD)
        push.cancel()  # the push's deadline
        with pytest.raises(asyncio.CancelledError):
            await push
        await asyncio.wait_for(store.one_stopped.wait(), HANG_GUARD)  # stopped, not waited for forever
        for _ in range(100):  # its end lowers the fence (done callbacks run soon after)
            reads = store.reads
            assert await value(src) == 10
            if store.reads == reads:
                break  # answered by the cache: a read filled it again
            await asyncio.sleep(0.01)
        else:
            pytest.fail("reads of the view never filled the cache again")
    finally:
        await src.close()


async def test_a_write_given_up_on_after_the_store_closed_is_stopped_at_once() -> None:
    """A push cancelled during shutdown, after close() gave up waiting for it (a TTL, 0.2 s
    here) and closed the store: stopped within a few turns of the loop, not left to run
    for another TTL on a closed store."""
    store = HangingStore(1)  # its write returns only if let go: never, here
    src = CachedSource(store, LRUCache(100, 0.2))
    push = asyncio.create_task(src.write(V, rows(11), 1))
    await asyncio.wait_for(store.all_in.wait(), HANG_GUARD)
    await asyncio.wait_for(src.close(), HANG_GUARD)  # waits a TTL for the write, then closes
    assert store.stopped == []
    push.cancel()  # its caller gives up after the close
    with pytest.raises(asyncio.CancelledError):
        await push
    for _ in range(5):  # the store's write sees its cancellation (no timer: a timer's TTL has not passed)
        await asyncio.sleep(0)
    assert store.stopped == [11] and store.written == []


class SlowToStopStore(HangingStore):
    """A store whose stopped writes take a while to end: write 1 until ``hold`` is
    set, write 2 some turns of the loop; ``close`` notes the writes still going."""

    def __init__(self) -> None:
        super().__init__(2)
        self.hold, self.stopping_first = asyncio.Event(), asyncio.Event()
        self.ended: list[int] = []
        self.going_at_close: list[int] | None = None

    async def write(
        self, view: FeatureView, table: pa.Table, data_version: int, *, create: bool = True
    ) -> int:
        a = table["a"][0].as_py()
        try:
            return await super().write(view, table, data_version)
        except asyncio.CancelledError:
            if a == 1:
                self.stopping_first.set()
                await self.hold.wait()
            else:
                for _ in range(50):  # its cleanup: a few awaits (a connection given back, ...)
                    await asyncio.sleep(0)
            raise
        finally:
            self.ended.append(a)

    async def close(self) -> None:
        self.going_at_close = sorted(set(self.entered) - set(self.ended))
        await super().close()


async def test_a_write_given_up_on_while_the_store_closes_has_ended_before_the_store_is_closed() -> None:
    """close() stopped the writes given up on before it and waited for them; one given
    up on while it waited was stopped too, but not waited for: the store closed under it."""
    store = SlowToStopStore()
    src = CachedSource(store, LRUCache(100, 30))
    first = asyncio.create_task(src.write(V, rows(1), 1))
    second = asyncio.create_task(src.write(V, rows(2), 1))
    await asyncio.wait_for(store.all_in.wait(), HANG_GUARD)
    first.cancel()  # given up on before the close: goes on, until close() stops it
    with pytest.raises(asyncio.CancelledError):
        await first
    closing = asyncio.create_task(src.close())
    await asyncio.wait_for(store.stopping_first.wait(), HANG_GUARD)  # close() waits for it
    second.cancel()  # given up on while closing: stopped at once
    with pytest.raises(asyncio.CancelledError):
        await second
    store.hold.set()
    await asyncio.wait_for(closing, HANG_GUARD)
    assert store.stopped == [1, 2] and store.going_at_close == []


class NotingStore(HangingStore):
    """A HangingStore whose close notes the writes still going."""

    going_at_close: list[int] | None = None

    async def close(self) -> None:
        self.going_at_close = sorted(set(self.entered) - set(self.written) - set(self.stopped))
        await super().close()


async def test_a_write_its_caller_still_awaits_ends_before_the_store_is_closed() -> None:
    store = NotingStore(1)
    src = CachedSource(store, LRUCache(100, 30))
    write = asyncio.create_task(src.write(V, rows(1), 1))
    await asyncio.wait_for(store.all_in.wait(), HANG_GUARD)
    closing = asyncio.create_task(src.close())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not closing.done()  # waiting for the write
    store.release.set()
    assert await asyncio.wait_for(write, HANG_GUARD) == 1
    await asyncio.wait_for(closing, HANG_GUARD)
    assert store.going_at_close == []


async def test_a_store_write_that_never_ends_holds_close_for_a_ttl_at_most() -> None:
    store = NotingStore(1)
    src = CachedSource(store, LRUCache(100, 0.2))
    write = asyncio.create_task(src.write(V, rows(1), 1))
    await asyncio.wait_for(store.all_in.wait(), HANG_GUARD)
    await asyncio.wait_for(src.close(), HANG_GUARD)  # the write still going: closed anyway
    assert store.going_at_close == [1]
    write.cancel()
    with pytest.raises(asyncio.CancelledError):
        await write


async def test_a_write_after_the_store_closed_is_refused_as_unavailable_naming_the_store() -> None:
    store = HangingStore(1)
    src = CachedSource(store, LRUCache(100, 30))
    await src.close()
    with pytest.raises(Unavailable, match="store 'threaded' is closed"):
        await asyncio.wait_for(src.write(V, rows(1), 1), HANG_GUARD)  # the store's write would never end
    assert store.entered == []  # never reached the store


def test_the_fence_stays_up_until_the_last_write_of_a_group_has_ended() -> None:
    fence = WriteFence()
    before = fence.now
    fence.raise_("g")
    fence.raise_("g")
    assert not fence.allows("g", before) and fence.allows("other", before)
    fence.lower("g")
    assert not fence.allows("g", fence.now)  # one write of it still going
    fence.lower("g")
    assert not fence.allows("g", before)  # a read that overlapped the writes fills nothing
    assert fence.allows("g", fence.now)  # one that started after them does


class GatedReads(MemorySource):
    """Reads answer what the store holds when asked, then wait for ``gate``."""

    def __init__(self) -> None:
        super().__init__("gated")
        self.keys_read: list[tuple[str, int, list[Any]]] = []
        self.asked, self.gate = asyncio.Event(), asyncio.Event()

    async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
        self.keys_read += [(q.view.name, q.data_version, list(q.keys)) for q in queries]
        out = await super().read(queries)
        self.asked.set()
        await self.gate.wait()
        return out


W = FeatureView("w", (U,), V.features)


async def test_a_write_stops_only_the_fills_of_the_view_and_data_version_it_writes() -> None:
    store = GatedReads()
    src = CachedSource(store, LRUCache(100, 30))
    await src.prepare([V, W])
    queries = [ViewQuery(W, [1], [0], 1), ViewQuery(V, [1], [0], 2), ViewQuery(V, [1], [0], 1)]
    reading = asyncio.create_task(src.read(queries))
    await asyncio.wait_for(store.asked.wait(), HANG_GUARD)
    await src.write(V, rows(11), 1)  # lands while the read is in flight
    store.gate.set()
    await reading
    store.keys_read.clear()
    [w, v2, v1] = await src.read(queries)
    assert store.keys_read == [("v", 1, [1])]  # only the written view's version was not cached
    assert isinstance(v1, ViewRead) and v1.columns == [[11]]
    assert isinstance(w, ViewRead) and isinstance(v2, ViewRead) and w.found == v2.found == [False]


def test_the_fence_forgets_groups_no_longer_read_but_not_one_being_written() -> None:
    fence = WriteFence()
    before = fence.now
    for group in ("old", "going"):
        fence.raise_(group)
    fence.lower("old")
    fence.keep_only(lambda group: False)  # a publication: neither is served any more
    assert fence.allows("old", before)  # forgotten (a late read of it may fill rows nobody reads)
    assert not fence.allows("going", fence.now)  # still being written: kept
    fence.lower("going")
    assert fence.allows("going", fence.now)
