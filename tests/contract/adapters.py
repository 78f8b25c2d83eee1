"""Adapter factories for the contract suites. A new adapter adds itself here."""

from __future__ import annotations

import pytest

from featurestore.registry.base import Registry
from featurestore.registry.file import FileRegistry
from featurestore.sources.base import OnlineSource
from featurestore.sources.memory import MemorySource

ADAPTERS = ["memory"]


async def make_source(name: str, request: pytest.FixtureRequest) -> OnlineSource:
    if name == "memory":
        return MemorySource("contract")
    raise ValueError(name)


REGISTRIES = ["file"]


class RegistryFactory:
    """Creates independent clients of one registry backend (fresh per test)."""

    def __init__(self, name: str, request: pytest.FixtureRequest) -> None:
        self.name = name
        self.request = request
        self.tmp = request.getfixturevalue("tmp_path")

    def client(self, project: str = "contract") -> Registry:
        if self.name == "file":
            return FileRegistry(self.tmp / "registry", project, poll_interval=0.05)
        raise ValueError(self.name)
