"""The Registry contract: every adapter (file, etcd) runs this same suite."""

from __future__ import annotations

import asyncio
import json

import pytest

from featurestore.definitions.snapshot import new_snapshot, snapshot_to_json
from featurestore.errors import Conflict, InvalidArgument, NotFound
from featurestore.model import Definitions, DType, Entity, Feature, FeatureView, make_definitions
from featurestore.registry.base import Canary, Registry, Watermark
from tests.contract.adapters import RegistryFactory

USER = Entity("user_id", DType.INT64)


def defs(n_features: int) -> Definitions:
    view = FeatureView("v", (USER,), tuple(Feature(f"f{i}", DType.FLOAT64) for i in range(n_features)))
    return make_definitions("contract", [USER], [view], [])


async def test_empty_registry(registry: Registry) -> None:
    assert await registry.current() is None
    assert await registry.versions() == []
    assert await registry.data_versions() == {}
    with pytest.raises(NotFound):
        await registry.get(1)


async def test_publish_and_read_back(registry: Registry) -> None:
    s1 = await registry.publish(defs(1), expected_version=None, message="first")
    assert s1.version == 1
    cur = await registry.current()
    assert (
        cur is not None and cur.version == 1 and cur.fingerprint == s1.fingerprint and cur.message == "first"
    )
    s2 = await registry.publish(defs(2), expected_version=1)
    assert s2.version == 2
    assert (await registry.current()).version == 2  # type: ignore[union-attr]
    assert await registry.versions() == [1, 2]
    old = await registry.get(1)
    assert len(old.definitions.views["v"].features) == 1  # snapshots are immutable


async def test_stale_expected_version_conflicts(registry: Registry) -> None:
    await registry.publish(defs(1), expected_version=None)
    with pytest.raises(Conflict) as info:
        await registry.publish(defs(2), expected_version=None)
    assert "re-read" in info.value.message and "retry" in info.value.message
    with pytest.raises(Conflict):
        await registry.publish(defs(2), expected_version=7)
    assert (await registry.current()).version == 1  # type: ignore[union-attr]


async def test_concurrent_publishes_exactly_one_wins(factory: RegistryFactory) -> None:
    clients = [factory.client() for _ in range(6)]
    await clients[0].publish(defs(1), expected_version=None)
    results = await asyncio.gather(
        *(c.publish(defs(i + 2), expected_version=1) for i, c in enumerate(clients)), return_exceptions=True
    )
    wins = [r for r in results if not isinstance(r, BaseException)]
    assert len(wins) == 1
    assert all(isinstance(r, Conflict) for r in results if isinstance(r, BaseException))
    cur = await clients[0].current()
    assert cur is not None and cur.fingerprint == wins[0].fingerprint
    for c in clients:
        await c.close()


async def test_data_version_compare_and_swap(registry: Registry) -> None:
    await registry.swap_data_version("v", expected=0, new=1)
    with pytest.raises(Conflict):
        await registry.swap_data_version("v", expected=0, new=2)
    await registry.swap_data_version("v", expected=1, new=2)
    await registry.swap_data_version("w", expected=0, new=5)
    assert await registry.data_versions() == {"v": 2, "w": 5}


async def test_watermarks_are_kept_per_view_and_swapped_by_compare_and_swap(registry: Registry) -> None:
    assert await registry.watermark("v") is None
    first, second = Watermark(1, 1_700_000_000_000_000), Watermark(1, 1_700_000_060_000_000)
    await registry.set_watermark("v", first, expected=None)
    with pytest.raises(Conflict):
        await registry.set_watermark("v", second, expected=None)  # a concurrent run moved it
    await registry.set_watermark("v", second, expected=first)
    assert await registry.watermark("v") == second
    assert await registry.watermark("w") is None
    await registry.swap_data_version("v", expected=0, new=1)
    assert await registry.data_versions() == {"v": 1}  # a watermark is no data version


async def test_a_watermarks_range_start_is_kept_and_one_without_is_stored_as_before(
    registry: Registry,
) -> None:
    """A ``--start`` run's watermark carries where its load began; one without a start
    is the document an older release wrote (and reads back as no start)."""
    plain = Watermark(1, 1_700_000_000_000_000)
    assert json.loads(plain.to_json()) == {"data_version": 1, "event_time_us": 1_700_000_000_000_000}
    await registry.set_watermark("v", plain, expected=None)
    assert await registry.watermark("v") == plain and plain.start_us is None
    ranged = Watermark(2, 1_700_000_060_000_000, start_us=1_699_000_000_000_000)
    await registry.set_watermark("v", ranged, expected=plain)
    assert await registry.watermark("v") == ranged
    moved = Watermark(2, 1_700_000_120_000_000, start_us=ranged.start_us)
    with pytest.raises(Conflict):  # the start is part of what the swap compares
        await registry.set_watermark("v", moved, expected=Watermark(2, ranged.event_time_us))
    await registry.set_watermark("v", moved, expected=ranged)
    assert await registry.watermark("v") == moved


async def test_every_views_watermark_is_read_at_once_and_a_malformed_one_is_left_out(
    registry: Registry, factory: RegistryFactory, caplog: pytest.LogCaptureFixture
) -> None:
    assert await registry.watermarks() == {}
    v, w = Watermark(3, 1_700_000_000_000_000), Watermark(1, 1_700_000_060_000_000, start_us=5)
    await registry.set_watermark("v", v, expected=None)
    await registry.set_watermark("w", w, expected=None)
    await registry.swap_data_version("v", expected=0, new=3)  # a data version is no watermark
    assert await registry.watermarks() == {"v": v, "w": w}
    await factory.put_by_hand("data/x/watermark", b'{"data_version": 1}')  # no event time
    await factory.put_by_hand("data/y/watermark", b"[1, 2]")
    await factory.put_by_hand("data/z/watermark", b'{"data_version": 1, "event_time_us": 1e400}')
    assert await registry.watermarks() == {"v": v, "w": w}
    assert "watermark of view x is malformed" in caplog.text
    assert "watermark of view y is malformed" in caplog.text
    assert "watermark of view z is malformed" in caplog.text


async def test_the_data_state_is_every_views_data_version_and_watermark_read_together(
    registry: Registry, factory: RegistryFactory
) -> None:
    assert await registry.data_state() == ({}, {})
    v = Watermark(3, 1_700_000_000_000_000)
    await registry.set_watermark("v", v, expected=None)
    await registry.swap_data_version("v", expected=0, new=3)
    await registry.swap_data_version("w", expected=0, new=1)
    await factory.put_by_hand("data/x/current", b"abc")  # malformed: left out, as data_versions()
    versions, marks = await registry.data_state()
    assert versions == {"v": 3, "w": 1} == await registry.data_versions()
    assert set(versions.malformed) == {"x"}
    assert marks == {"v": v} == await registry.watermarks()


async def test_projects_are_separate(factory: RegistryFactory) -> None:
    a, b = factory.client("alpha"), factory.client("beta")
    await a.publish(defs(1), expected_version=None)
    assert await b.current() is None
    await a.close()
    await b.close()


async def test_changes_feed_sees_publications(factory: RegistryFactory) -> None:
    watcher, writer = factory.client(), factory.client()
    feed = watcher.changes().__aiter__()
    # the first yield says "watching now": whatever changes from here on is seen
    await asyncio.wait_for(feed.__anext__(), timeout=5)
    await writer.publish(defs(1), expected_version=None)
    await asyncio.wait_for(feed.__anext__(), timeout=5)
    current = await watcher.current()  # what a server does on each yield
    assert current is not None and current.version == 1
    await writer.swap_data_version("v", expected=0, new=1)
    await asyncio.wait_for(feed.__anext__(), timeout=5)
    assert await watcher.data_versions() == {"v": 1}
    await feed.aclose()  # type: ignore[attr-defined]
    await watcher.close()
    await writer.close()


async def test_changes_feed_misses_nothing_published_before_it_is_armed(factory: RegistryFactory) -> None:
    """A server reads its state, then arms its watch: a publication in between is
    still caught, by the re-read the first yield triggers."""
    watcher, writer = factory.client(), factory.client()
    assert await watcher.current() is None  # the server's initial read
    await writer.publish(defs(1), expected_version=None)  # lands before the watch
    feed = watcher.changes().__aiter__()
    await asyncio.wait_for(feed.__anext__(), timeout=5)
    assert (await watcher.current()) is not None  # the re-read sees it
    await feed.aclose()  # type: ignore[attr-defined]
    await watcher.close()
    await writer.close()


async def test_stage_then_set_current(registry: Registry) -> None:
    await registry.publish(defs(1), expected_version=None)
    staged = await registry.stage(defs(3), message="candidate")
    assert staged.version == 2
    assert (await registry.current()).version == 1  # type: ignore[union-attr]  # staging does not switch
    with pytest.raises(Conflict):
        await registry.set_current(2, expected_version=7)
    with pytest.raises(NotFound):
        await registry.set_current(99, expected_version=1)
    await registry.set_current(2, expected_version=1)
    cur = await registry.current()
    assert cur is not None and cur.version == 2 and cur.message == "candidate"
    assert (await registry.publish(defs(4), expected_version=2)).version == 3


async def test_canary_compare_and_swap(registry: Registry) -> None:
    assert await registry.canaries() == {}
    await registry.publish(defs(1), expected_version=None)
    with pytest.raises(NotFound):  # no canary of a candidate that does not exist (pruned meanwhile)
        await registry.set_canary("svc", Canary(2, 0.25, 1), expected=None)
    await registry.stage(defs(2))
    c = Canary(candidate_version=2, share=0.25, base_version=1)
    await registry.set_canary("svc", c, expected=None)
    assert await registry.canaries() == {"svc": c}
    with pytest.raises(Conflict):
        await registry.set_canary("svc", Canary(3, 0.5, 1), expected=None)
    await registry.set_canary("svc", None, expected=c)
    assert await registry.canaries() == {}
    with pytest.raises(InvalidArgument):
        Canary(2, 1.5, 1)


async def test_health_reports_contact(registry: Registry) -> None:
    await registry.versions()
    h = registry.health()
    assert h.connected and h.seconds_since_contact < 5


async def test_feature_versions_follow_definition_changes(registry: Registry) -> None:
    await registry.publish(defs(1), expected_version=None)
    s2 = await registry.publish(defs(2), expected_version=1)
    assert s2.feature_versions == {"v:f0": 1, "v:f1": 2}  # f0 unchanged keeps its version
    view = FeatureView("v", (USER,), (Feature("f0", DType.INT64), Feature("f1", DType.FLOAT64)))
    s3 = await registry.publish(make_definitions("contract", [USER], [view], []), expected_version=2)
    assert s3.feature_versions == {"v:f0": 3, "v:f1": 2}
    assert (await registry.get(3)).feature_versions == s3.feature_versions  # stored, not recomputed


async def test_allocated_data_versions_are_unique_and_above_current(factory: RegistryFactory) -> None:
    a, b = factory.client(), factory.client()
    got = await asyncio.gather(*(c.allocate_data_version("v") for c in (a, b) for _ in range(5)))
    assert sorted(got) == list(range(1, 11))  # ten callers, ten different versions
    await a.swap_data_version("v", expected=0, new=4)
    assert await b.allocate_data_version("v") == 11
    assert await a.data_versions() == {"v": 4}  # allocating moves no pointer
    assert await a.allocate_data_version("other") == 1
    await a.close()
    await b.close()


async def test_a_version_deleted_by_hand_is_never_handed_out_again(factory: RegistryFactory) -> None:
    registry = factory.client()
    await registry.publish(defs(1), expected_version=None)
    staged = await registry.stage(defs(5), message="a canary candidate, later aborted")
    await factory.snapshot_by_hand(staged.version, None)  # the operator prunes it
    assert await registry.versions() == [1]
    published = await registry.publish(defs(3), expected_version=1)
    assert published.version == staged.version + 1
    assert (await registry.stage(defs(4))).version == published.version + 1
    await registry.close()


async def test_a_snapshot_rewritten_by_hand_is_not_served_from_the_cache(factory: RegistryFactory) -> None:
    """A server caches snapshots by version; one deleted and written again by hand
    (etcdctl) must be read again, not served with the old content under its number."""
    server, writer = factory.client(), factory.client()
    await writer.publish(defs(1), expected_version=None)
    await writer.stage(defs(5))
    feed = server.changes().__aiter__()
    await asyncio.wait_for(feed.__anext__(), timeout=5)
    assert len((await server.get(2)).definitions.views["v"].features) == 5  # cached now
    await factory.snapshot_by_hand(2, snapshot_to_json(new_snapshot(defs(2), 2)))
    if factory.name == "etcd":  # the server learns it from its watch
        await asyncio.wait_for(feed.__anext__(), timeout=5)
    assert len((await server.get(2)).definitions.views["v"].features) == 2
    await feed.aclose()  # type: ignore[attr-defined]
    await server.close()
    await writer.close()


async def test_promote_moves_current_and_ends_the_canary_in_one_step(factory: RegistryFactory) -> None:
    registry = factory.client()
    await registry.publish(defs(1), expected_version=None)
    staged = await registry.stage(defs(2))
    canary = Canary(staged.version, 0.1, 1)
    await registry.set_canary("svc", canary, expected=None)
    with pytest.raises(Conflict):  # another canary than the one recorded: nothing changes
        await registry.promote("svc", Canary(staged.version, 0.5, 1))
    assert (await registry.current()).version == 1  # type: ignore[union-attr]
    await registry.promote("svc", canary)
    assert (await registry.current()).version == staged.version  # type: ignore[union-attr]
    assert await registry.canaries() == {}
    await registry.close()


async def test_a_promote_racing_an_abort_leaves_one_of_them_whole(factory: RegistryFactory) -> None:
    """Two operators: one promotes, one aborts. Exactly one wins and the registry is
    never left half-promoted (current moved with the canary still running, or the
    reverse)."""
    a, b = factory.client(), factory.client()
    await a.publish(defs(1), expected_version=None)
    for _ in range(5):
        base = await a.current()
        assert base is not None
        staged = await a.stage(defs(2))
        canary = Canary(staged.version, 0.1, base.version)
        await a.set_canary("svc", canary, expected=None)
        results = await asyncio.gather(
            a.promote("svc", canary), b.set_canary("svc", None, expected=canary), return_exceptions=True
        )
        assert sum(r is None for r in results) == 1, results
        assert all(isinstance(r, Conflict) for r in results if r is not None)
        current = await b.current()
        assert current is not None
        assert current.version == (staged.version if results[0] is None else base.version)
        assert await b.canaries() == {}
    await a.close()
    await b.close()


async def test_snapshots_are_parsed_off_the_event_loop(
    factory: RegistryFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parsing and verifying a large snapshot takes tens of milliseconds: a server's
    event loop must not stall on it while it swaps in a change."""
    import threading

    from featurestore.definitions import snapshot as snapshot_module
    from featurestore.registry import etcd, file

    threads: list[int] = []
    parse = snapshot_module.snapshot_from_json

    def spy(raw: bytes, version: int | None = None) -> object:
        threads.append(threading.get_ident())
        return parse(raw, version)

    for module in (etcd, file):
        monkeypatch.setattr(module, "snapshot_from_json", spy)
    writer, server = factory.client(), factory.client()
    await writer.publish(defs(3), expected_version=None)
    assert (await server.current()) is not None
    assert threads and threading.get_ident() not in threads
    await writer.close()
    await server.close()
