"""Which Bolt errors the adapter (lineage/graph/bolt.py) retries, which mean the graph
server cannot take the request now (GraphUnavailable), and how an error is named."""

from __future__ import annotations

from neo4j import exceptions as neo

# Worth retrying at once: the server is busy, a write conflicted, or the connection broke.
RETRYABLE = (neo.TransientError, neo.ConstraintError, neo.ServiceUnavailable, neo.SessionExpired)
# Our statements never name an entity by internal id, so "entity not found" can only mean
# a concurrent transaction moved or removed a record this one had already matched: ArcadeDB
# raises it when a racing writer commits between our MATCH and our SET. A conflict, then.
RACED_CODES = frozenset({"Neo.ClientError.Statement.EntityNotFound"})


def retryable(e: Exception) -> bool:
    return isinstance(e, RETRYABLE) or (isinstance(e, neo.Neo4jError) and e.code in RACED_CODES)


# Not about the request either, but not going away within a retry loop: no connection
# can be had, the configuration or credentials are wrong, access is refused.
UNAVAILABLE = (neo.DriverError, neo.AuthError, neo.Forbidden, OSError)
# Codes about the server's state, not the statement: the database is missing (dropped
# for a restore, not created yet) or a cluster member cannot take writes. The same write
# passes once that is over. Not Neo.DatabaseError.*: ArcadeDB answers its default code,
# Neo.DatabaseError.General.UnknownError, for statements the data breaks too (an index
# key over a page, review s54 #1): the consumer then asks the probe (``ping``, a write).
SERVER_STATE_CODES = ("Neo.ClientError.Database.", "Neo.ClientError.Cluster.")


def server_state(e: Exception) -> bool:
    return isinstance(e, neo.Neo4jError) and (e.code or "").startswith(SERVER_STATE_CODES)


def described(e: Exception) -> str:
    """An error with its code: a driver error's repr hides it (``ClientError()``)."""
    if isinstance(e, neo.Neo4jError) and e.code:
        return f"{type(e).__name__} {e.code}: {e.message}"
    return repr(e)
