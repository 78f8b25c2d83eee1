"""The ``/metrics`` endpoint of a process that does not serve joins (``featurestore lineage
consume``, ``featurestore stream run``): prometheus_client's own HTTP server, without the
serving process's state gauges (``metrics.SERVING_STATE``), which such a process imports
but never sets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric

from featurestore import metrics


class _WithoutServingState:
    """The default registry's metric families but the serving state's."""

    def __init__(self) -> None:
        self._left_out = frozenset(f.name for g in metrics.SERVING_STATE for f in g.describe())

    def collect(self) -> Iterator[Metric]:
        for family in REGISTRY.collect():
            if family.name not in self._left_out:
                yield family


def registry() -> CollectorRegistry:
    """What such a process exposes: every metric it may set (its own, and those of the
    stores and caches it uses) and the process and Python collectors."""
    exposed = CollectorRegistry(auto_describe=False)
    exposed.register(_WithoutServingState())
    return exposed


def start(port: int, host: str) -> Any:
    """Serve it on ``host:port``, in a thread (prometheus_client's); returns its server and thread."""
    return start_http_server(port, addr=host, registry=registry())
