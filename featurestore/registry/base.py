"""The ``Registry`` port: versioned, immutable snapshots switched by compare-and-swap.

Two adapters implement it with the same semantics (``tests/contract/test_registry.py``
runs against both): ``file`` for the embedded default and ``etcd`` for production.

* ``publish`` writes snapshot n+1 (n = the highest existing version) and swaps
  ``current`` to it only if ``current`` still is ``expected_version``; otherwise it
  raises ``Conflict`` and the written snapshot stays unreferenced.
* Data-version pointers (one per view, for atomic materialization) are swapped the
  same way by ``swap_data_version``.
* ``changes`` yields whenever ``current`` or a data-version pointer may have changed;
  the server then re-reads and swaps its in-memory state off the hot path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from featurestore.registry.definitions import Definitions
from featurestore.registry.snapshot import RegistrySnapshot


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

    async def publish(
        self, definitions: Definitions, *, expected_version: int | None, message: str = ""
    ) -> RegistrySnapshot:
        """Write snapshot n+1 and make it current iff current == expected_version."""
        ...

    async def data_versions(self) -> dict[str, int]:
        """Current data version of every view that has one."""
        ...

    async def swap_data_version(self, view: str, *, expected: int, new: int) -> None:
        """Point ``view`` at data version ``new`` iff it is at ``expected`` (0 = unset)."""
        ...

    def changes(self) -> AsyncIterator[None]:
        """Yields after anything under the project's prefix may have changed."""
        ...

    async def close(self) -> None: ...


async def load_state(registry: Registry) -> tuple[RegistrySnapshot | None, Mapping[str, int]]:
    """Snapshot and data versions read together (what a server swaps in)."""
    return await registry.current(), await registry.data_versions()
