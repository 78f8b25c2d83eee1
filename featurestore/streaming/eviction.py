"""Whether a stream processor's tile store may drop keys on its own.

A store that evicts keys breaks the exactly-once effect (docs/streaming.md, Stores): an
evicted marks hash has the retained topic applied again into the tiles left, and evicted
tiles lose their events. A processor asks once, after its first write (the store answers
then: one started while Redis is down consumes and measures its lag meanwhile), and logs
what it found.
"""

from __future__ import annotations

import logging

from featurestore.streaming.retry import transient
from featurestore.streaming.store import TileStore

log = logging.getLogger(__name__)


def checked(store: TileStore, view: str) -> bool:
    """Ask ``store`` and log an error (it evicts), a warning (it would once a limit is set,
    or cannot be asked) or nothing; False: not told yet (a failure of the store's server:
    ask again after the next write)."""
    try:
        got = store.eviction()
    except Exception as e:
        if transient(e):
            return False
        got = None
    if got is None:
        log.warning(
            "stream view %s: could not read the tile store's eviction policy (CONFIG renamed or "
            "refused?): it must be noeviction, or events are counted twice or lost",
            view,
        )
    elif got.policy != "noeviction" and got.max_bytes:
        log.error(
            "stream view %s: the tile store's Redis evicts keys (maxmemory-policy %s, maxmemory %d): "
            "an evicted marks hash makes events count twice, evicted tiles lose them; set "
            "noeviction or give stream views a Redis of their own", view, got.policy, got.max_bytes,
        )  # fmt: skip
    elif got.policy != "noeviction":
        log.warning(
            "stream view %s: the tile store's Redis would evict keys once a maxmemory is set "
            "(maxmemory-policy %s): set noeviction", view, got.policy,
        )  # fmt: skip
    return True
