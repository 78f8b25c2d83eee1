"""Prometheus metrics of the serving process, all ``featurestore_*`` in base units.

Metrics are module-level (one registry per process, as prometheus_client intends).
With several worker processes the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before
the workers start, and ``/metrics`` aggregates every worker's values.

Hot-path updates are buffered: a join adds to plain Python numbers and lists
(``Buffered*``), and ``flush()`` folds them into prometheus_client, four times a second
(the runtime's ``metrics-flush`` task) and before every scrape, so nothing is lost. With
one process a scrape is exact; with several workers the scrape flushes only the worker
that answers it, so the other workers' values may be up to a quarter second old. prometheus_client takes a
lock and walks the buckets in Python per observation; a batch-1 join makes about a
dozen updates, which unbuffered cost ~10% of its CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _mp
from prometheus_client.metrics_core import Metric

from featurestore import metrics_files
from featurestore.freshness import FRESHNESS
from featurestore.metric_buffers import BufferedCounter, BufferedGauge, BufferedHistogram, Children
from featurestore.metric_buffers import flush as flush  # (metrics.flush(): the callers' name)

LATENCY_BUCKETS = (
    0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
# Requests also get buckets around the default 500 ms deadline, so a request that ran just
# past it (waiting before its handler, or sending its answer) shows as such.
REQUEST_BUCKETS = (
    *LATENCY_BUCKETS[: LATENCY_BUCKETS.index(0.5) + 1],
    0.6,
    0.75,
    *LATENCY_BUCKETS[LATENCY_BUCKETS.index(1.0) :],
)
ROW_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

REQUESTS = Counter(
    "featurestore_requests_total",
    "Requests handled, by route, protocol and outcome (ok, partial, shed: a join refused "
    "under overload, CANCELLED or an error code).",
    ["route", "protocol", "outcome"],
)
REQUEST_DURATION = Histogram(
    "featurestore_request_duration_seconds",
    "Time from the request's first byte read (HTTP) or the call's start (gRPC) to its answer "
    "(HTTP: ready to send; gRPC: sent), by route, protocol and outcome.",
    ["route", "protocol", "outcome"],
    buckets=REQUEST_BUCKETS,
)
INFLIGHT = Gauge(
    "featurestore_inflight_requests",
    "Joins being served right now, by protocol: from the request's start (HTTP: before its "
    "body is read; gRPC: the call's, before its message is read) to its answer, refused and "
    "shed ones included (the shedder's cap counts admitted joins only).",
    ["protocol"],
    multiprocess_mode="livesum",
)
HTTP_CONNECTIONS_CLOSED = Counter(
    "featurestore_http_connections_closed_total",
    "HTTP connections the server closed on a limit, by reason: idle, header_timeout, body_timeout, "
    "write_timeout, header_too_large, max_connections, malformed (not HTTP/1.1: answered 400).",
    ["reason"],
)
AUTH_FAILURES = Counter(
    "featurestore_auth_failures_total",
    "Requests refused for their bearer token, by route and reason: missing, invalid (unknown "
    "token: 401 / UNAUTHENTICATED), forbidden (a token without the route's scope: 403 / "
    "PERMISSION_DENIED).",
    ["route", "reason"],
)
HTTP_CONNECTIONS = Gauge(
    "featurestore_http_connections",
    "Open HTTP connections (sampled about once a second while any is open).",
    multiprocess_mode="livesum",
)
JOIN_ROWS = Histogram(
    "featurestore_join_rows",
    "Entity rows per join request.",
    buckets=ROW_BUCKETS,
)
JOIN_KEYS_READ = Histogram(
    "featurestore_join_keys_read",
    "Distinct entity keys read per view per join request (after deduplication).",
    buckets=ROW_BUCKETS,
)
VIEW_READ_DURATION = Histogram(
    "featurestore_view_read_duration_seconds",
    "Time to read one view from its online store within a join: reads that answered, and "
    "reads cut short by the deadline or a client gone (at the time cut); failed reads are in "
    "featurestore_view_read_failures_total.",
    ["view", "store"],
    buckets=LATENCY_BUCKETS,
)
VIEW_READ_FAILURES = Counter(
    "featurestore_view_read_failures_total",
    "View reads that failed or missed the deadline (values served as UNAVAILABLE).",
    ["view", "store", "reason"],
)
FEATURE_VALUES = Counter(
    "featurestore_feature_values_total",
    "Feature values served, by view and status (a stored view read only for derived features: "
    "one per entity row, the statuses those features inherit).",
    ["view", "status"],
)
REQUESTS_SHED = Counter(
    "featurestore_requests_shed_total",
    "Joins refused before any store is read because a queue of joins stood in the worker "
    "(HTTP 503 / gRPC RESOURCE_EXHAUSTED), by api and reason (inflight: the hard cap; "
    "latency: the limit lowered by a standing queue: the event loop late on average in two 100 ms intervals in a row; "
    "deadline: less of its deadline left than the event loop's lag; rows: its entity rows would take those "
    "in flight past limits.shed_max_rows while the loop ran late; max_connections: "
    "a connection refused over http.max_connections, any route).",
    ["api", "reason"],
)
CACHE_HITS = Counter("featurestore_cache_hits_total", "LRU cache hits, by view.", ["view"])
CACHE_MISSES = Counter("featurestore_cache_misses_total", "LRU cache misses, by view.", ["view"])
CACHE_BYPASSED = Counter("featurestore_cache_bypassed_total", "Keys read past the cache, by view.", ["view"])
CACHE_READS = Counter(
    "featurestore_cache_reads_total",
    "Reads of a cached store by what the cache bypass decided: consulted (the cache for every "
    "key), skipped (past it), trial (past it, a sample of its keys looked up), by store.",
    ["store", "decision"],
)
CACHE_EVICTIONS = Counter(
    "featurestore_cache_evictions_total", "Rows evicted to stay within the size bound, by store.", ["store"]
)
CACHE_REJECTIONS = Counter(
    "featurestore_cache_rejections_total",
    "Rows read from the store that the admission policy kept out of the full cache "
    "(less frequent than the entry they would have evicted), by store.",
    ["store"],
)
CACHE_ENTRIES = Gauge(
    "featurestore_cache_entries",
    "Rows held by the row cache in front of each remote store (one cache per store).",
    ["store"],
    multiprocess_mode="livesum",
)
SOURCE_UP = Gauge(
    "featurestore_source_up",
    "1 when the online store answers, 0 when it is down.",
    ["store", "kind"],
    multiprocess_mode="livemin",
)
SOURCE_READ_RETRIES = Counter(
    "featurestore_source_read_retries_total",
    "Store reads tried again on a fresh connection after a connection error (a socket "
    "the server or a proxy closed while it idled); a failed retry marks the store down.",
    ["store"],
)
REDIS_CLUSTER_REREADS = Counter(
    "featurestore_redis_cluster_reread_total",
    "Redis Cluster reads that did not go by the slot map alone: `redirected` (a key had "
    "moved or was migrating: asked again of the node named; a MOVED also refreshes the map), "
    "`fallback` (the cluster in flux, a node refusing connections: read again through "
    "redis-py), `unmapped` (no slot map yet: read through redis-py). A few during a start, "
    "a resharding or a failover; a steady rate means the slot map keeps going stale or "
    "cannot be built.",
    ["store", "reason"],
)
SOURCE_CONNECTIONS_OPENED = Counter(
    "featurestore_source_connections_opened_total",
    "Read connections a Redis store opened: on first use, and again after one was lost "
    "or dropped (a read given up on mid-way, at its deadline, drops its connection). A "
    "steady rate under steady load means connections churn.",
    ["store"],
)
PIPELINE_WRITES = Counter(
    "featurestore_redis_pipeline_writes_total",
    "Writes of auto-pipelined Redis reads (several joins' MGETs in one write) handed to a "
    "connection, by store and held (true: the write began waiting for gRPC calls' reads, "
    "store option hold_iterations; it may have gone early, or at once with "
    "hold_iterations 1). Joins' reads per write: featurestore_redis_pipeline_reads_total "
    "over this.",
    ["store", "held"],
)
PIPELINE_READS = Counter(
    "featurestore_redis_pipeline_reads_total",
    "Joins' reads carried by auto-pipelined Redis writes, by store and held: one per join and store "
    "(on a Redis Cluster, one per join and node its keys reach).",
    ["store", "held"],
)
SOURCE_ROWS_LOADED = Gauge(
    "featurestore_source_rows_loaded",
    "Rows held in memory per view by the in-process store.",
    ["store", "view"],
    multiprocess_mode="livemax",
)
REGISTRY_CONNECTED = Gauge(
    "featurestore_registry_connected",
    "1 while the registry backend answers, 0 while the server serves its last snapshot blind.",
    multiprocess_mode="livemin",
)
TLS_CERT_EXPIRY = Gauge(
    "featurestore_tls_certificate_expiry_timestamp_seconds",
    "notAfter of the serving certificate each listener (http, grpc) loaded at its start, "
    "by file (unix time): read once, so a renewed file counts only once the pod restarts.",
    ["listener", "file"],
    multiprocess_mode="livemin",
)
REGISTRY_STALENESS = Gauge(
    "featurestore_registry_staleness_seconds",
    "Seconds since the registry backend last answered: how stale the served snapshot may be.",
    multiprocess_mode="livemax",
)
SERVICE_REQUESTS = Counter(
    "featurestore_service_requests_total",
    "Joins of a feature service, by service and the registry version that served them (canary split).",
    ["service", "registry_version"],
)
SERVICE_DURATION = Histogram(
    "featurestore_service_join_duration_seconds",
    "Join engine time for feature-service requests, by service and serving registry version.",
    ["service", "registry_version"],
    buckets=LATENCY_BUCKETS,
)
GC_PAUSE = Histogram(
    "featurestore_gc_pause_seconds",
    "Python's cyclic garbage collections and how long each stopped the process, by generation "
    "(0 young, 2 full; featurestore/collector.py).",
    ["generation"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
REGISTRY_APPLY_FAILURES = Counter(
    "featurestore_registry_apply_failures_total",
    "Attempts to serve a published registry change that failed (each is retried with backoff).",
)
REGISTRY_APPLY_PENDING = Gauge(
    "featurestore_registry_apply_pending",
    "1 while a published registry change has failed to apply and is being retried.",
    multiprocess_mode="livemax",
)
BACKGROUND_TASK_RESTARTS = Counter(
    "featurestore_background_task_restarts_total",
    "Background tasks (registry-apply, registry-watch, ...) that ended by accident and were restarted.",
    ["task"],
)
REGISTRY_WATCH_LOST = Counter(
    "featurestore_registry_watch_lost_total",
    "etcd registry watches lost and re-established, by cause: connection (etcd unreachable),"
    " cancelled (etcd cancelled the watch), ended (etcd ended the stream), compacted"
    " (history compacted past the last revision seen: the registry is read again), reset"
    " (etcd is behind the last revision seen, or another cluster: its data was lost or"
    " restored from a backup; the registry is read again in full).",
    ["cause"],
)
# At 0 from the start: increase() over a series that appears at its first count reads 0,
# and FeatureStoreRegistryReset would miss a process's first (and likely only) reset.
for _cause in ("connection", "cancelled", "ended", "compacted", "reset"):
    REGISTRY_WATCH_LOST.labels(_cause)
REGISTRY_VERSION = Gauge(
    "featurestore_registry_version",
    "Registry snapshot version being served.",
    multiprocess_mode="livemin",
)
# A serving process's state. Other processes (the lineage consumer, the stream processor)
# import this module for their stores and caches but never set these, and at their
# import-time 0 they read as a server blind to its registry: FeatureStoreRegistryUnreachable
# paged for every consumer and processor (review s53). Those processes leave them out of
# their /metrics (featurestore/exporter.py).
SERVING_STATE = (
    HTTP_CONNECTIONS,
    REGISTRY_CONNECTED,
    REGISTRY_STALENESS,
    REGISTRY_APPLY_PENDING,
    REGISTRY_VERSION,
)
DERIVED_KERNEL_DURATION = Histogram(
    "featurestore_derived_kernel_duration_seconds",
    "Time to compute one derived view in a join: arrays in, kernel, values out.",
    ["view"],
    buckets=(0.00001, 0.00002, 0.00005, *LATENCY_BUCKETS),
)
DERIVED_COMPILES = Counter(
    "featurestore_derived_compiles_total",
    "Derived-view kernels by how they became servable: compiled (in the build process), "
    "loaded (machine code from the on-disk cache), cache_missed (a load found no usable cache entry: "
    "refused rather than compiled in the serving process, then built again), failed.",
    ["result"],
)
STREAM_WINDOWS_KERNEL_LOADS = Counter(
    "featurestore_stream_windows_kernel_loads_total",
    "Loads of the compiled pass that assembles stream views' windows at read time, by result: loaded, "
    "failed (windows in numpy meanwhile: the same values, ~3x the CPU at batch 100; for good unless the "
    "build was killed by a signal or ran past its time, which the next registry swap tries again).",
    ["result"],
)
DERIVED_COMPILE_DURATION = Histogram(
    "featurestore_derived_compile_duration_seconds",
    "Wall time of one run of the kernel build process (off the serving process).",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)


def retire_registry_versions(served: set[str]) -> None:
    """The per-service metrics of registry versions no longer served (neither the current
    one nor a canary's candidate) are dropped at a swap: every apply raises the version,
    so without this each one added its series for the life of the process. A request still
    running on an old version when it ends writes it again, dropped at the next swap.
    With several workers the series stay in the workers' files, which prometheus_client
    cannot shrink: ``render`` leaves them out of the scrape instead."""
    global _served_versions
    _served_versions = frozenset(served)
    for children in (service_requests, service_duration):
        children.drop(lambda labels: labels[1] not in served)


_served_versions: frozenset[str] | None = None  # None: no swap yet, every version shown
_BY_VERSION = frozenset({"featurestore_service_requests", "featurestore_service_join_duration_seconds"})


class _ServedVersionsOnly:
    """The workers' files as a collector, without the per-service series of registry
    versions no longer served (what ``retire_registry_versions`` drops in one process)."""

    def __init__(self, files: Any) -> None:
        self._files = files

    def collect(self) -> Iterator[Metric]:
        served = _served_versions
        for family in self._files.collect():
            if served is not None and family.name in _BY_VERSION:
                family.samples = [s for s in family.samples if s.labels.get("registry_version") in served]
            yield family


REGISTRY.register(FRESHNESS)  # single process: the default registry's scrape

requests = Children(REQUESTS, BufferedCounter)
request_duration = Children(REQUEST_DURATION, BufferedHistogram)
inflight = Children(INFLIGHT, BufferedGauge)
cache_evictions = Children(CACHE_EVICTIONS, BufferedCounter)
cache_rejections = Children(CACHE_REJECTIONS, BufferedCounter)
cache_entries = Children(CACHE_ENTRIES, BufferedGauge)
pipeline_writes = Children(PIPELINE_WRITES, BufferedCounter)
pipeline_reads = Children(PIPELINE_READS, BufferedCounter)
view_read_duration = Children(VIEW_READ_DURATION, BufferedHistogram)
view_read_failures = Children(VIEW_READ_FAILURES, BufferedCounter)
feature_values = Children(FEATURE_VALUES, BufferedCounter)
cache_hits = Children(CACHE_HITS, BufferedCounter)
requests_shed = Children(REQUESTS_SHED, BufferedCounter)
cache_misses = Children(CACHE_MISSES, BufferedCounter)
cache_bypassed = Children(CACHE_BYPASSED, BufferedCounter)
cache_reads = Children(CACHE_READS, BufferedCounter)
gc_pause = Children(GC_PAUSE, BufferedHistogram)  # (a gc callback: no lock, collector.py)
service_requests = Children(SERVICE_REQUESTS, BufferedCounter)
service_duration = Children(SERVICE_DURATION, BufferedHistogram)
derived_kernel_duration = Children(DERIVED_KERNEL_DURATION, BufferedHistogram)
join_rows = BufferedHistogram(JOIN_ROWS)
join_keys_read = BufferedHistogram(JOIN_KEYS_READ)


def exposition() -> tuple[bytes, str]:
    """The text exposition for ``/metrics``, aggregated across worker processes: the
    buffers flushed, then ``render``. The route runs the two apart (``render`` in a
    thread, off the event loop)."""
    flush()
    return render()


def render() -> tuple[bytes, str]:
    """The text exposition of what prometheus_client holds: with several workers, read
    from every worker's files (and the dead ones' archive, ``metrics_files``), which
    takes milliseconds: callable from any thread (``flush`` is the event loop's)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        registry = CollectorRegistry()
        registry.register(_ServedVersionsOnly(_mp.MultiProcessCollector(None, path)))  # type: ignore[no-untyped-call]
        registry.register(FRESHNESS)  # (this worker's registry state: not in the files)
        with metrics_files.reading(path):
            return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


# -- appended: data and log health (issue 10) -----------------------------------------
VIEW_DATA_MISSING = Gauge(
    "featurestore_view_data_missing",
    "1 while the data version served for a view is missing from its online store "
    "(Redis restarted empty, a dropped table): every value of the view not in the row cache is UNAVAILABLE.",
    ["store", "view"],
    multiprocess_mode="livemax",
)
