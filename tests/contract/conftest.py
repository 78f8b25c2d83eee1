"""The registry contract's fixtures (tests/contract/test_registry*.py): each backend in
``adapters.REGISTRIES``, and a client of it closed after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from featurestore.registry.base import Registry
from tests.contract.adapters import REGISTRIES, RegistryFactory


@pytest.fixture(params=REGISTRIES)
def factory(request: pytest.FixtureRequest) -> RegistryFactory:
    return RegistryFactory(request.param, request)


@pytest.fixture
async def registry(factory: RegistryFactory) -> AsyncIterator[Registry]:
    reg = factory.client()
    yield reg
    await reg.close()
