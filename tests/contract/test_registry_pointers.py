"""Registry pointers (``registry/current``, ``registry/next``, ``data/{view}/current`` and
``/next``) that hold no version number, written by hand: every adapter names the key, its
value and how to restore it (FAILED_PRECONDITION), and reading every view's data version
leaves a malformed one out. A ValueError traceback crashed the CLI and ``serve``, and
stopped running servers from applying any change."""

from __future__ import annotations

import pytest

from featurestore.errors import Code, FailedPrecondition
from featurestore.model import Definitions, DType, Entity, Feature, FeatureView, make_definitions
from featurestore.registry.admin import RegistryAdmin
from featurestore.registry.base import load_state
from featurestore.registry.pointers import MalformedPointer
from tests.contract.adapters import RegistryFactory

USER = Entity("user_id", DType.INT64)


def defs(n_features: int) -> Definitions:
    view = FeatureView("v", (USER,), tuple(Feature(f"f{i}", DType.FLOAT64) for i in range(n_features)))
    return make_definitions("contract", [USER], [view], [])


# (int() took all but the first: '١٢' is 12 (from a file), '1_0' is 10, '-1' is -1)
NOT_NUMBERS = [b"x1", "\u0661\u0662".encode(), b"+3", b"1_0", b"-1", b"1" * 19]


@pytest.mark.parametrize("value", NOT_NUMBERS, ids=repr)
async def test_a_current_pointer_that_is_no_version_number_is_refused_naming_key_and_value(
    factory: RegistryFactory, value: bytes
) -> None:
    registry = factory.client()
    await registry.publish(defs(1), expected_version=None)
    await factory.put_by_hand("registry/current", value)
    key = factory.where("registry/current")
    admin = RegistryAdmin(registry)
    for call in (
        registry.current,
        lambda: registry.publish(defs(2), expected_version=1),
        lambda: registry.stage(defs(2)),
        lambda: registry.set_current(1, expected_version=1),
        lambda: registry.prune(1),
        admin.history,
        lambda: load_state(registry),
    ):
        with pytest.raises(MalformedPointer) as raised:
            await call()
        assert raised.value.code is Code.FAILED_PRECONDITION
        message = raised.value.message
        assert f"registry pointer {key} is malformed: {value.decode()!r} is no version number" in message
        assert "write into it the version of the snapshot to serve" in message
        assert raised.value.details == [{"key": key, "value": value.decode()}]
    await factory.put_by_hand("registry/current", b"1\n")  # restored (as `echo 1 > current`)
    assert (await registry.publish(defs(2), expected_version=1)).version == 2
    await registry.close()


@pytest.mark.parametrize("value", NOT_NUMBERS[:2], ids=repr)
async def test_a_next_pointer_that_is_no_version_number_is_refused_by_every_write_of_a_snapshot(
    factory: RegistryFactory, value: bytes
) -> None:
    registry = factory.client()
    await registry.publish(defs(1), expected_version=None)
    await factory.put_by_hand("registry/next", value)
    for write in (registry.publish(defs(2), expected_version=1), registry.stage(defs(2))):
        with pytest.raises(MalformedPointer, match="write into it the highest version") as raised:
            await write
        assert raised.value.key == factory.where("registry/next")
    current = await registry.current()  # (reads need no counter)
    assert current is not None and current.version == 1
    await factory.put_by_hand("registry/next", b"1")
    assert (await registry.publish(defs(2), expected_version=1)).version == 2
    await registry.close()


async def test_a_malformed_data_pointer_leaves_its_view_out_and_every_write_of_it_names_the_key(
    factory: RegistryFactory, caplog: pytest.LogCaptureFixture
) -> None:
    registry = factory.client()
    await registry.publish(defs(1), expected_version=None)
    await registry.swap_data_version("v", expected=0, new=3)
    await registry.swap_data_version("w", expected=0, new=5)
    await factory.put_by_hand("data/v/current", b"abc")
    key = factory.where("data/v/current")
    found = await registry.data_versions()
    assert found == {"w": 5} and list(found.malformed) == ["v"]
    assert f"data version of view v is left out: registry pointer {key} is malformed: 'abc'" in caplog.text
    state = await load_state(registry)  # what a server reads: everything else
    assert state.snapshot is not None and state.snapshot.version == 1
    assert state.data_versions == {"w": 5}
    assert f"{key} is malformed: 'abc'" in state.malformed_data_versions["v"]
    for write in (
        lambda: registry.swap_data_version("v", expected=3, new=4),
        lambda: registry.allocate_data_version("v"),
    ):
        with pytest.raises(
            FailedPrecondition, match="write back the data version it held, or delete it"
        ) as e:
            await write()
        assert isinstance(e.value, MalformedPointer) and e.value.key == key
    assert await registry.allocate_data_version("w") == 6  # the other views are untouched
    await factory.put_by_hand("data/w/next", b"six")
    with pytest.raises(MalformedPointer, match="the next data version is then allocated above") as raised:
        await registry.allocate_data_version("w")
    assert raised.value.key == factory.where("data/w/next")
    await factory.put_by_hand("data/v/current", b"3")
    assert await registry.data_versions() == {"v": 3, "w": 5}
    await registry.close()


async def test_a_long_malformed_pointer_is_shown_clipped(factory: RegistryFactory) -> None:
    registry = factory.client()
    await factory.put_by_hand("data/v/current", b"x" * 5000)
    found = await registry.data_versions()
    message = found.malformed["v"].message
    assert "'" + "x" * 100 + "'... (5000 characters)" in message and len(message) < 600
    assert found.malformed["v"].details[0]["value"] == "x" * 100 + "..."
    await registry.close()
