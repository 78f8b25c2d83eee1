"""Prometheus metrics of the lineage pipeline (``featurestore_lineage_*``).

The break rate SREs alert on (deploy/prometheus: FeatureSourceDown) is
``rate(featurestore_lineage_broken_total) / rate(featurestore_lineage_served_total)``:
served feature values whose lineage could not be resolved or delivered, over all
served feature values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

# The serving metrics' latency buckets (featurestore.metrics), kept equal so dashboards
# can compare graph writes with reads; lineage does not import the serving side.
LATENCY_BUCKETS = (
    0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip

SERVED = Counter(
    "featurestore_lineage_served_total",
    "Feature values served, as accounted by lineage (the break rate's denominator).",
)
BROKEN = Counter(
    "featurestore_lineage_broken_total",
    "Served feature values whose lineage was not resolved or not delivered, by reason.",
    ["reason"],  # unresolved | queue_full | sink_buffer_full | undelivered
)
EVENTS = Counter(
    "featurestore_lineage_events_total",
    "Lineage events by outcome (emitted, delivered, failed, dropped).",
    ["outcome"],
)
RUN_MESSAGES = Counter(
    "featurestore_lineage_run_messages_total",
    "Job-run reports sent on the lineage topic by the Kafka sink, by outcome (delivered, failed, "
    "dropped); apart from the events, which are what emitted counts.",
    ["outcome"],
)
QUEUE = Gauge(
    "featurestore_lineage_queue_events",
    "Lineage events waiting for the sink.",
    multiprocess_mode="livesum",
)
SINK_UP = Gauge(
    "featurestore_lineage_sink_up",
    "1 while the lineage sink delivers, 0 while it buffers or drops.",
    ["sink"],
    multiprocess_mode="livemin",
)
CONSUMED = Counter(
    "featurestore_lineage_consumed_total",
    "Lineage messages taken off Kafka by the consumer, by outcome (written, dead_letter, "
    "dead_letter_truncated: delivered cut or without its value, too large for the broker; "
    "dead_letter_lost: refused by the broker in every form).",
    ["outcome"],
)
CONSUMER_LAG = Gauge(
    "featurestore_lineage_consumer_lag_messages",
    "Messages in the topic not yet committed by the consumer group, by partition.",
    ["partition"],
)
# Labelled so that only a process that sets it exports it: without labels every serving
# process (which imports this module for its emitter) exported a 0 it never sets, and
# LineageGraphUnavailable paged on each healthy server (review s54 #2).
GRAPH_UP = Gauge(
    "featurestore_lineage_graph_up",
    "1 while the lineage graph answers the client, 0 while the client finds it unavailable. "
    "Consumer: its writes and probe; its batches are retried and nothing is committed. Server: "
    "its GraphQL reads and its schema and definitions writes, retried in the background while "
    "it serves (a graph found unavailable is probed until it answers). By client (consumer, "
    "server); absent from processes that do not use a graph server.",
    ["client"],
    multiprocess_mode="livemin",
)
TOPIC_LOST = Counter(
    "featurestore_lineage_topic_lost_total",
    "Times a lineage client found a topic re-created (a new topic id): the broker lost it "
    "and what it held. By client (sink, consumer) and topic (events, dead_letters).",
    ["client", "topic"],
)
LOST_EVENTS = Counter(
    "featurestore_lineage_lost_events_total",
    "Lineage events a broker had taken but lost with its topic before the consumer read "
    "them (the partition ends the consumer last fetched minus what it had read: a floor).",
)
GRAPH_WRITE = Histogram(
    "featurestore_lineage_graph_write_seconds",
    "Time to write one batch of lineage events into the graph.",
    buckets=LATENCY_BUCKETS,
)
EVENT_TO_GRAPH = Histogram(
    "featurestore_lineage_event_to_graph_seconds",
    "From the end of an event's window on the server to the event written in the graph.",
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0),
)

for _reason in ("unresolved", "queue_full", "sink_buffer_full", "undelivered"):
    BROKEN.labels(_reason)  # every reason exists from the start, so rates are 0, not absent
OPENLINEAGE = Counter(
    "featurestore_lineage_openlineage_total",
    "Job run reports handed to the OpenLineage transport, by outcome (sent, failed, dropped)",
    ["outcome"],
)
DEFINITIONS_WRITES = Counter(
    "featurestore_lineage_definitions_writes_total",
    "A serving process's writes of a registry snapshot's definitions into the lineage graph "
    "server, by outcome (written, failed: retried with backoff, the newest snapshot only).",
    ["outcome"],
)
RUNS_UNRECORDED = Counter(
    "featurestore_lineage_runs_unrecorded_total",
    "Job run reports the lineage sink did not take (the graph down or hung, a refused "
    "write): logged, and the job went on. By state (START, COMPLETE, FAIL).",
    ["state"],
)
RUNS = Counter(
    "featurestore_lineage_runs_total",
    "Job run reports recorded (lineage/runs.py), by state (START, COMPLETE, FAIL)",
    ["state"],
)


CONSUMED_OUTCOMES = ("written", "dead_letter", "dead_letter_truncated", "dead_letter_lost")


def forget_lag(partitions: Iterable[int]) -> None:
    """Partitions this consumer no longer owns (revoked or lost): another member reports
    their lag now, and this one's last value, frozen, would be counted twice."""
    for p in partitions:
        with contextlib.suppress(KeyError):
            CONSUMER_LAG.remove(str(p))
