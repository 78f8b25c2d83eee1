"""``featurestore lineage consume``."""

from __future__ import annotations

import argparse
import asyncio
import logging


def cmd_lineage_consume(args: argparse.Namespace, _argv: list[str]) -> int:
    import signal

    from prometheus_client import start_http_server

    from featurestore import server
    from featurestore.config import load_config
    from lineage.consumer import ConsumerConfig, LineageConsumer

    config = load_config(args.config, {("log_level",): args.log_level})
    logging.getLogger().setLevel(config.log_level.upper())
    k = config.lineage.kafka
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_host)

    async def run() -> None:
        graph = server.make_graph(config)
        await graph.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        consumer = LineageConsumer(
            ConsumerConfig(
                bootstrap_servers=k.bootstrap_servers,
                topic=k.topic,
                group_id=k.group_id,
                dead_letter_topic=f"{k.topic}.dlq",
                replication_factor=k.replication_factor,
                batch_size=args.batch_size,
                session_timeout_ms=k.session_timeout_ms,
                heartbeat_interval_ms=max(k.session_timeout_ms // 5, 100),
                window_seconds=config.lineage.window_seconds,
            ),
            graph,
        )
        try:
            await consumer.run(stop)
        finally:
            await graph.close()
        print(
            f"lineage consumer stopped: {consumer.written} events written, {consumer.dead_lettered} dead-lettered"
        )

    asyncio.run(run())
    return 0
