"""Lineage: where a served feature came from, as events and as a graph.

``events`` defines the wire format (JSON on Kafka topic ``feature-lineage-v1``);
emitter, sinks, consumer, graph and GraphQL API build on it.
"""

TOPIC = "feature-lineage-v1"
