"""``featurestore stream run`` (the processor of stream views) and ``stream produce-sample``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import signal
import sys
import threading
import time
from typing import Any

from featurestore.cli.base import Subcommands, port, seconds, start_metrics

log = logging.getLogger(__name__)
# A processor started beside `featurestore serve` (docs/streaming.md's walk-through) can
# read the registry before the server has applied its definitions (2-5 s here): wait.
REGISTRY_WAIT_SECONDS = 30


def register(sub: Subcommands) -> None:
    st = sub.add_parser("stream", help="stream views: run their processor, produce sample events")
    ssub = st.add_subparsers(dest="stream_command", required=True)
    run = ssub.add_parser("run", help="consume stream views' topics into tiles until stopped")
    run.add_argument("--config", help="server config: stores, registry, stream.kafka")
    run.add_argument("--view", action="append", required=True, help="a stream view (repeat for several)")
    run.add_argument("--definitions", help="read the views from this file instead of the registry")
    run.add_argument("--metrics-port", type=port(off=True), default=9110, help="Prometheus metrics (0: off)")
    run.add_argument("--metrics-host", default="127.0.0.1", help="address the metrics listen on")
    run.add_argument(
        "--log-level", help="debug, info, warning, error, critical (default: the config's log_level)"
    )
    run.set_defaults(func=cmd_stream_run)
    ps = ssub.add_parser("produce-sample", help="produce demo click events (JSON) to a topic")
    ps.add_argument("--config", help="server config: stream.kafka (the cluster)")
    ps.add_argument("--topic", default="clicks")
    ps.add_argument("--partitions", type=int, default=3, help="when the topic is created")
    ps.add_argument("--users", type=int, default=10, help="user ids 1..N")
    ps.add_argument("--rate", type=float, default=20.0, help="events per second")
    ps.add_argument("--seconds", type=seconds, default=60.0, help="how long (0: until stopped)")
    ps.add_argument("--malformed-every", type=int, default=0, help="every Nth event is malformed (0: none)")
    ps.add_argument("--seed", type=int, default=7)
    ps.set_defaults(func=cmd_stream_produce_sample)


def cmd_stream_run(args: argparse.Namespace, _argv: list[str]) -> int:
    from featurestore.config import load_config
    from featurestore.errors import InvalidArgument, NotFound
    from featurestore.extras import require
    from featurestore.factories import make_registry, make_tile_store
    from featurestore.logconfig import configure_logging
    from featurestore.streaming.processor import ProcessorOptions, StreamProcessor, consumer_group

    config = load_config(args.config, {("log_level",): args.log_level}, {("log_level",): "--log-level"})
    require("confluent_kafka", "featurestore stream run")
    configure_logging(config.log_level, config.log_format)
    from featurestore.tls_files import check_kafka, check_lineage

    check_kafka(config.stream.kafka, "stream.kafka")
    check_lineage(config.lineage, job=True)  # where its runs go (_record_runs)
    definitions = _definitions(args.definitions, make_registry(config) if not args.definitions else None)
    processors = []
    for name in args.view:
        view = definitions.views.get(name)
        if view is None:
            raise NotFound(f"unknown feature view {name!r}")
        if view.stream is None:
            raise InvalidArgument(f"{name!r} is not a stream view (stream_views: in the definitions)")
        sc = config.stores.get(view.online_store)
        if sc is None:
            raise InvalidArgument(f"view {name!r} uses store {view.online_store!r}, which the config lacks")
        if sc.kind == "memory":
            raise InvalidArgument(
                f"view {name!r}: store {view.online_store!r} is in-process memory, which a separate "
                "processor cannot fill; use a redis store"
            )
        sconf = config.stream
        options = ProcessorOptions(
            batch_messages=sconf.batch_messages,
            poll_seconds=sconf.poll_seconds,
            group_id=consumer_group(sconf.group_prefix, config.project, view),
            lag_interval_seconds=sconf.lag_interval_seconds,
        )
        store = make_tile_store(view.online_store, sc, config)
        processors.append(StreamProcessor(view, store, sconf.kafka, config.project, options))
    if args.metrics_port:
        start_metrics(args.metrics_port, args.metrics_host)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    threads = [
        threading.Thread(target=_run_one, args=(p, stop), name=f"stream-{p.view.name}", daemon=True)
        for p in processors
    ]
    for t in threads:
        t.start()
    asyncio.run(_record_runs(config, processors, threads, stop))
    failed = [p.view.name for p in processors if getattr(p, "failed", False)]
    if failed:  # non-zero, so a supervisor sees a failure (and restarts it), not a clean stop
        print(f"error: stream processor failed: {', '.join(failed)} (the log has why)", file=sys.stderr)
        return 1
    print(f"stream processor stopped: {', '.join(p.view.name for p in processors)}")
    return 0


def _run_one(processor: Any, stop: threading.Event) -> None:
    try:
        processor.run(stop)
    except Exception:  # one view's failure stops the process: its supervisor restarts it
        log.exception("stream view %s: processor failed", processor.view.name)
        processor.failed = True  # its lineage run ends FAIL (featurestore/streaming/runs.py)
        stop.set()


async def _record_runs(config: Any, processors: list[Any], threads: list[Any], stop: threading.Event) -> None:
    """Wait for the processors, recording each as lineage job runs in windows of
    ``stream.run_window_seconds`` (to the lineage sink, Kafka or a Bolt graph, and
    OpenLineage when configured); runs for an in-process graph have no graph here."""
    from featurestore import logs
    from featurestore.factories import make_run_recorder
    from featurestore.streaming.runs import record_runs
    from lineage.runs import BufferedRuns

    # A window is a run: a graph that failed a report is tried again in the next window
    # (at most one report a window waits for it, up to its 5 s; the processors never do).
    recorder, close = await make_run_recorder(config, skip_seconds=config.stream.run_window_seconds)
    if isinstance(recorder.sink, BufferedRuns):  # held for `serve --demo` only: nothing takes them here
        recorder.sink = None
    try:
        async with logs.flushing(records_only=True):  # (the processors log from their threads)
            await record_runs(recorder, processors, threads, stop, config.stream.run_window_seconds)
    finally:
        await close()


def _definitions(path: str | None, registry: Any) -> Any:
    from featurestore.definitions.parser import load_definitions
    from featurestore.errors import FailedPrecondition

    if path:
        return load_definitions(path)

    async def current() -> Any:
        try:
            for attempt in range(REGISTRY_WAIT_SECONDS * 2 + 1):
                snapshot = await registry.current()
                if snapshot is not None or attempt == REGISTRY_WAIT_SECONDS * 2:
                    return snapshot
                if attempt == 0:
                    log.warning("the registry has no snapshot yet: waiting up to %ss", REGISTRY_WAIT_SECONDS)
                await asyncio.sleep(0.5)
        finally:
            await registry.close()

    snapshot = asyncio.run(current())
    if snapshot is None:
        raise FailedPrecondition("the registry has no snapshot: run `featurestore apply FILE` first")
    return snapshot.definitions


def cmd_stream_produce_sample(args: argparse.Namespace, _argv: list[str]) -> int:
    from featurestore.extras import require

    require("confluent_kafka", "featurestore stream produce-sample")  # one line, exit 2, not a traceback
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

    from featurestore.config import load_config
    from featurestore.errors import InvalidArgument
    from lineage.kafka import ensure_topic

    for flag, value, least in (
        ("--users", args.users, 1),
        ("--partitions", args.partitions, 1),
        ("--malformed-every", args.malformed_every, 0),
    ):
        if value < least:
            raise InvalidArgument(f"{flag} must be at least {least}, got {value}")
    if not 0 < args.rate < float("inf"):
        raise InvalidArgument(f"--rate must be a positive number of events per second, got {args.rate}")
    kafka = load_config(args.config).stream.kafka
    ensure_topic(AdminClient(kafka.client_config()), args.topic, args.partitions, kafka.replication_factor)
    producer = Producer({**kafka.client_config(), "linger.ms": 5})
    rng = random.Random(args.seed)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    start = time.monotonic()
    sent = 0
    while not stop.is_set() and (args.seconds <= 0 or time.monotonic() - start < args.seconds):
        sent += 1
        user = rng.randint(1, args.users)
        if args.malformed_every and sent % args.malformed_every == 0:
            value = b'{"user_id": "not a number", "ts": "yesterday"'
        else:
            event = {
                "user_id": user,
                "ts": time.time_ns() // 1_000_000,
                "type": rng.choice(("click", "click", "view")),
                "item_id": rng.randint(1, 500),
                "amount": round(rng.uniform(1, 100), 2),
            }
            value = json.dumps(event).encode()
        producer.produce(args.topic, key=str(user).encode(), value=value)
        producer.poll(0)
        wait = start + sent / args.rate - time.monotonic()
        if wait > 0:
            stop.wait(wait)
    left = producer.flush(10)
    print(f"produced {sent - left} events to {args.topic}")
    return 0 if left == 0 else 2
