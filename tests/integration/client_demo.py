"""The demo server the client's integration tests join (one per test module: the demo
definitions, derived view user_derived and service ranker_v2 included, on memory stores)
and its address by transport."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_derived_serving import demo_definitions, start_server
from tests.support import ServerProcess


def demo_server(
    demo_dir: Path, tmp_path_factory: pytest.TempPathFactory, name: str
) -> Iterator[ServerProcess]:
    """For a module-scoped fixture: ``yield from demo_server(...)``."""
    work = tmp_path_factory.mktemp(name)
    proc = start_server(work, demo_dir, demo_definitions(demo_dir, work / "features.yaml"))
    yield proc
    proc.stop()


def address(server: ServerProcess, transport: str) -> str:
    return server.url if transport == "http" else f"grpc://{server.grpc_target}"
