"""Prometheus metrics of the stream processor, per view, all ``featurestore_stream_*``.

The processor serves them on its own port (``featurestore stream run --metrics-port``).
Each batch updates them once, never per event.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter(
    "featurestore_stream_events_total",
    "Events of a stream view by outcome: consumed (read from Kafka), applied (added to the batch; one "
    "older than every window changes nothing), late (beyond the allowed lateness: dropped), "
    "dead_lettered (malformed), filtered, duplicate "
    "(at or below the stored offset: already applied).",
    ["view", "outcome"],
)
BATCHES = Counter(
    "featurestore_stream_batches_total",
    "Batches written to the tile store, by result (applied, conflict: a partition's stored offset "
    "moved, e.g. after a rebalance; the batch was dropped and re-read).",
    ["view", "result"],
)
STORE_RETRIES = Counter(
    "featurestore_stream_store_retries_total",
    "Tile store calls (a batch write, a marks read) retried after a failure of the store's server "
    "(unreachable, timed out, read-only replica, MISCONF, BUSY, LOADING, OOM).",
    ["view"],
)
DEAD_LETTER_FAILURES = Counter(
    "featurestore_stream_dead_letter_failures_total",
    "Dead letters whose delivery to the dead-letter topic failed (each is produced again; the batch "
    "waits for them).",
    ["view"],
)
PARTITION_RESETS = Counter(
    "featurestore_stream_partition_resets_total",
    "Partitions found to end before their stored offset (the topic was created again, or its broker "
    "lost it): their marks were reset and they were applied again from their start.",
    ["view"],
)
LAG_MESSAGES = Gauge(
    "featurestore_stream_lag_messages",
    "Messages in the topic not yet applied (high watermark - next offset), summed over assigned partitions.",
    ["view"],
)
LAG_SECONDS = Gauge(
    "featurestore_stream_lag_seconds",
    "Age of the newest applied message (now - its Kafka timestamp) while messages are waiting; 0 when caught "
    "up. Before the processor applied one: the newest event time of the stored marks, else the first "
    "consumed message's timestamp, else how long messages have been seen waiting.",
    ["view"],
)
LATENCY = Histogram(
    "featurestore_stream_event_to_servable_seconds",
    "From an event's Kafka timestamp to the end of its batch's write (servable), observed for the "
    "oldest and newest (by Kafka timestamp) of each batch's applied events.",
    ["view"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
UP = Gauge(
    "featurestore_stream_processor_up", "1 while the view's processor runs its consume loop.", ["view"]
)
