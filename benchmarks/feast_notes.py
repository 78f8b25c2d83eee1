"""The notes under the Feast side-by-side section (benchmarks/results/feast*.md), with the
run's own figures filled in."""

from __future__ import annotations

from typing import Any

from benchmarks.feast_targets import cpu_ms


def notes(b: dict[Any, Any], feast: str, ours: list[str], points: list[tuple[int, int]], tool: str) -> str:
    """The notes, with this run's numbers (never numbers from an older run)."""
    cached = next((o for o in ours if not o.endswith("_nocache")), ours[0])
    nocache = next((o for o in ours if o.endswith("_nocache")), ours[-1])

    def span(label: str, batch: int) -> str:
        vals = [
            v
            for c in sorted({c for bb, c in points if bb == batch})
            if (v := cpu_ms(b.get((label, tool, batch, c))))
        ]
        if not vals:
            return "-"
        lo, hi = min(vals), max(vals)
        return f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}-{hi:.2f}"

    batches = sorted({bb for bb, _ in points})
    cpu = "; ".join(
        f"batch {bb}: {span(cached, bb)} ms (cache on) against Feast's {span(feast, bb)} ms" for bb in batches
    )
    big = max(batches)
    c_on, c_off = cpu_ms(b.get((cached, tool, big, 32))), cpu_ms(b.get((nocache, tool, big, 32)))
    cache_line = (
        f"At batch {big} (c=32) the server spent {c_on:.2f} ms CPU per request with the cache on, "
        f"{c_off:.2f} ms with it off"
        if c_on is not None and c_off is not None
        else f"At batch {big} no CPU figure for both cache settings"
    )
    return NOTES.format(cpu=cpu, cache_line=cache_line)


NOTES = """
### Reading these numbers

* The 2 vCPUs are shared by the servers under test, Redis and the load generator, and
  the VM is shared with other tenants: `bench.py` measures other tenants' CPU per run
  and repeats noisy runs; only runs made in the same call are compared. Server CPU per
  request is the steadiest comparison; in this run: {cpu}.
* Where the time goes (py-spy, one featurestore process, batch 1, concurrency 32, cache
  off; a profile taken once, not per run): join engine incl. the Redis socket write 33%,
  uvicorn/httptools and the ASGI glue 25%, redis-py reply reading and msgpack decoding
  18%, JSON decode/encode 10%, the event loop 9%, tracing 2%, metrics 0.7%, lineage 0.2%
  (before auto-pipelining was on by default: since, the MGETs of the joins of one
  event-loop tick share one write, "Requirement 3 experiments" below; before a
  plain join skipped uvicorn's ASGI cycle, 2026-12-04: -5.1% CPU per request at batch 1,
  -4.1% at 100, same section; and before the store read Redis on its own connection
  instead of redis-py's, 2026-12-05, same section).
* featurestore serves a plain HTTP join from uvicorn's protocol without an ASGI cycle
  (`featurestore/api/join_cycle.py`; no framework routing on the hot path), reads Redis with one pipelined MGET per view (plus the view's layout
  marker) on a lean connection pool without per-call timeouts, decodes msgpack rows once
  per unique key, computes statuses once per view, buffers its metrics, and calls
  `gc.freeze()` after start-up so full collections do not walk the loaded heap (Feast's
  workers pause 130-190 ms for that reason).
* With the cache on (TTL 30 s, 200,000 rows: both views' 100,000 users fit, the
  production default), keys come from the in-process cache once read in the last 30 s.
  wrk's bodies (`benchmarks/wrk_keys.lua`) hold three draws per user (batch 1: 300,000
  pre-built bodies), so the cache sees the whole key space; the peer's loadgen.py (the
  latency columns) cycles its 4,096 bodies, at batch 1 a hot set of ~4,000 users.
  Until 2026-12-03 wrk cycled 4,096 bodies too. The `_nocache` columns read every
  key from Redis. {cache_line}. A cached row
  costs about what a row from Redis on loopback costs; the cache saves the round trip,
  and only for a read it answers in full. So a large read whose chance of a full hit
  does not pay for its expected fills (batch 100: 200 keys, almost always one miss) goes
  past the cache to Redis for every key (`cache.fills_per_round_trip`,
  `docs/storage.md`); on Redis under load that rule also sends batch-1 reads past a cache
  that misses often (the default figure, 0.5: a two-view batch-1 read consults while both
  views hit at least 83% of their keys, a one-view one-key read from 67%; under load a
  full hit on a loopback Redis saves no CPU, `benchmarks.cache_figures`).
* featurestore's workers share the port with SO_REUSEPORT; gunicorn's (Feast) share one
  accepting socket, which can spread few connections unevenly (see the cores column).
"""
