"""Writes of the etcd registry that another client overtakes between their read and their
transaction, against a real etcd. When only the version counter moved (a snapshot staged
meanwhile: a canary's candidate), publish and stage take the next number, still comparing
current's mod_revision; when current moved, the Conflict says what it is now."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from featurestore.errors import Conflict
from featurestore.model import Definitions, DType, Entity, Feature, FeatureView, make_definitions
from featurestore.registry.etcd import EtcdRegistry
from tests.servers import EtcdServer

USER = Entity("user_id", DType.INT64)


def defs(n_features: int) -> Definitions:
    view = FeatureView("v", (USER,), tuple(Feature(f"f{i}", DType.FLOAT64) for i in range(n_features)))
    return make_definitions("p", [USER], [view], [])


def overtaken(reg: EtcdRegistry, meanwhile: Callable[[], Awaitable[Any]], times: int = 1) -> None:
    """Run ``meanwhile`` (another client's write) right after ``reg`` reads the version
    counter, ``times`` times: between its read and its transaction."""
    read_counter = reg._next_version
    left = [times]

    async def then_overtaken() -> tuple[int, int]:
        got = await read_counter()
        if left[0] > 0:
            left[0] -= 1
            await meanwhile()
        return got

    reg._next_version = then_overtaken  # type: ignore[method-assign]


@pytest.fixture
async def clients(etcd_server: EtcdServer) -> AsyncIterator[tuple[EtcdRegistry, EtcdRegistry]]:
    project = f"p{uuid.uuid4().hex[:8]}"
    mine, other = EtcdRegistry([etcd_server.endpoint], project), EtcdRegistry([etcd_server.endpoint], project)
    await mine.publish(defs(1), expected_version=None)
    yield mine, other
    await mine.close()
    await other.close()


async def test_a_publish_overtaken_by_a_canary_candidate_staged_meanwhile_publishes_the_next_version(
    clients: tuple[EtcdRegistry, EtcdRegistry],
) -> None:
    """It failed with "registry current is changed concurrently, not 1 as expected",
    although current had not moved: only the counter had."""
    mine, other = clients
    overtaken(mine, lambda: other.stage(defs(5)), times=3)
    published = await mine.publish(defs(2), expected_version=1)
    staged = [v for v in await other.versions() if v not in (1, published.version)]
    assert staged == [2, 3, 4] and published.version == 5
    current = await other.current()
    assert current is not None and current.version == 5 and current.fingerprint == published.fingerprint


async def test_a_publish_overtaken_by_another_publish_says_what_current_is_now(
    clients: tuple[EtcdRegistry, EtcdRegistry],
) -> None:
    mine, other = clients
    overtaken(mine, lambda: other.publish(defs(5), expected_version=1))
    with pytest.raises(Conflict) as raised:
        await mine.publish(defs(2), expected_version=1)
    assert raised.value.message.startswith("registry current is 2, not 1 as expected: ")
    assert "re-read the registry and retry" in raised.value.message
    assert await other.versions() == [1, 2]  # nothing of the loser is left behind


async def test_a_publish_overtaken_by_a_rewrite_of_current_to_the_same_version_is_a_conflict(
    clients: tuple[EtcdRegistry, EtcdRegistry],
) -> None:
    """The compare-and-swap is on current's mod_revision: a write of the same number
    (a rollback and a roll forward) is a change too, said as such."""
    mine, other = clients
    overtaken(mine, lambda: other.set_current(1, expected_version=1))
    with pytest.raises(Conflict) as raised:
        await mine.publish(defs(2), expected_version=1)
    assert raised.value.message.startswith("registry current was written concurrently (it was 1 when read): ")


async def test_a_stage_overtaken_by_another_stage_takes_the_next_number(
    clients: tuple[EtcdRegistry, EtcdRegistry],
) -> None:
    """It failed with "registry snapshot 2 is written concurrently, not absent as expected"."""
    mine, other = clients
    overtaken(mine, lambda: other.stage(defs(5)))
    staged = await mine.stage(defs(3))
    assert staged.version == 3 and await other.versions() == [1, 2, 3]
    assert (await other.current()).version == 1  # type: ignore[union-attr]


async def test_a_writer_overtaken_every_time_gives_up_saying_the_counter_kept_moving(
    clients: tuple[EtcdRegistry, EtcdRegistry],
) -> None:
    mine, other = clients
    overtaken(mine, lambda: other.stage(defs(5)), times=1000)
    with pytest.raises(Conflict, match=r"version counter \(registry/next\) moved 20 times"):
        await mine.publish(defs(2), expected_version=1)
    assert (await other.current()).version == 1  # type: ignore[union-attr]


async def test_a_compare_and_swap_lost_between_read_and_write_says_it_was_written_concurrently(
    clients: tuple[EtcdRegistry, EtcdRegistry],
) -> None:
    """set_current said "registry current is changed concurrently, not 1 as expected"."""
    mine, other = clients
    await mine.stage(defs(2))
    transaction = mine._client.transaction

    async def overtaken_transaction(*args: Any, **kwargs: Any) -> Any:
        await other.set_current(2, expected_version=1)
        return await transaction(*args, **kwargs)

    mine._client.transaction = overtaken_transaction
    with pytest.raises(Conflict) as raised:
        await mine.set_current(2, expected_version=1)
    assert raised.value.message.startswith("registry current was written concurrently (it was 1 when read): ")
