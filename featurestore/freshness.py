"""How fresh each view's materialized data is: two gauges a server reports from its
registry state, for the alert that pages when a view callers read has nothing younger
than its max age left (``FeatureStoreViewExpired``, docs/storage.md).

* ``featurestore_view_loaded_event_timestamp_seconds{view}``: the newest event time
  materialization loaded into the data version the view serves (its watermark, when the
  watermark is of that version). Absent for a view never materialized, or fed only by
  push or a stream: nothing recorded when its rows were made.
* ``featurestore_view_max_age_seconds{view}``: the view's ``ttl_seconds``, absent
  without one.

They are computed at scrape time from the state the server last read (a collector, not
gauges set per worker): a view dropped from the definitions, or a watermark a newer
full run made stale, leaves the scrape at once, where the multiprocess files of a set
gauge would keep its last value for the life of the worker. With several workers the
one answering the scrape reports; all follow the same registry.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

if TYPE_CHECKING:
    from featurestore.definitions.snapshot import RegistrySnapshot
    from featurestore.registry.base import Watermark

LOADED = "featurestore_view_loaded_event_timestamp_seconds"
MAX_AGE = "featurestore_view_max_age_seconds"


class Freshness:
    """A prometheus collector of the two gauges, fed by ``update`` at each registry read."""

    def __init__(self) -> None:
        self._loaded: dict[str, float] = {}
        self._max_age: dict[str, float] = {}

    def update(
        self,
        snapshots: Sequence[RegistrySnapshot],
        data_versions: Mapping[str, int],
        watermarks: Mapping[str, Watermark],
    ) -> None:
        """The views the worker serves (``snapshots``: current and each canary's
        candidate; a view whose max age differs between them shows the shorter, whose
        values expire first: the alert's PRESENT term keeps quiet while the other's are
        served) at the data versions it serves, with the registry's watermarks. Called
        once a state is served, never for one that failed to apply. A watermark counts
        only when it is of the data version served (0: nothing materialized): one of an
        older version describes rows no longer read."""
        loaded: dict[str, float] = {}
        max_age: dict[str, float] = {}
        for snapshot in snapshots:
            for name, view in snapshot.definitions.views.items():
                if view.ttl_seconds is not None:
                    max_age[name] = min(float(view.ttl_seconds), max_age.get(name, math.inf))
                mark = watermarks.get(name)
                served = data_versions.get(name, 0)
                if mark is not None and served > 0 and mark.data_version == served:
                    loaded[name] = mark.event_time_us / 1e6
        self._loaded, self._max_age = loaded, max_age  # swapped whole: a scrape reads one state

    def collect(self) -> Iterator[Metric]:
        loaded, max_age = self._loaded, self._max_age
        if not loaded and not max_age:  # not a server, or nothing to say: no empty families
            return
        g = GaugeMetricFamily(
            LOADED,
            "Newest event time materialization loaded into the data version each view serves "
            "(its watermark), epoch seconds; absent for views never materialized or fed only by push or a stream.",
            labels=["view"],
        )
        for view, ts in sorted(loaded.items()):
            g.add_metric([view], ts)
        yield g
        g = GaugeMetricFamily(
            MAX_AGE, "Each view's max age (ttl_seconds), for views that have one.", labels=["view"]
        )
        for view, seconds in sorted(max_age.items()):
            g.add_metric([view], seconds)
        yield g


FRESHNESS = Freshness()  # the process's one (runtime.py feeds it, metrics.render scrapes it)
