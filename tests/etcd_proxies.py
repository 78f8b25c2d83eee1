"""Proxies in front of a real etcd for the registry's watch tests: a gRPC proxy that
can end watch streams cleanly, and a TCP proxy whose connections can go silent; and what
those tests share: the lost-watch counter, and stopping a change feed under test."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

import grpc
from prometheus_client import REGISTRY

from tests.servers import EtcdServer
from tests.support import free_port


def watch_lost(cause: str) -> float:
    """featurestore_registry_watch_lost_total{cause} in this process."""
    return REGISTRY.get_sample_value("featurestore_registry_watch_lost_total", {"cause": cause}) or 0.0


async def settle(pending: asyncio.Future[None] | None, changes: AsyncGenerator[None, None]) -> None:
    """Stop a registry's change feed under test: the step still awaited, then the feed."""
    if pending is not None and not pending.done():
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pending
    await changes.aclose()


class WatchEndingProxy(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A gRPC proxy in front of a real etcd, forwarding every call as it is, that can end
    the watch streams open through it cleanly (status OK, as a proxy or load balancer
    closing a long-lived stream may): ``end_watches``, or each one right after etcd's
    first response (etcd's confirmation) with ``end_at_once``; or end each one after
    ``unanswered_for`` seconds without passing etcd's confirmation on (a watch whose
    connect took that long, then failed). It keeps the metadata each watch was opened
    with (``watch_metadata``)."""

    def __init__(
        self, etcd: EtcdServer, *, end_at_once: bool = False, unanswered_for: float | None = None
    ) -> None:
        self.port = free_port()
        self.upstream = grpc.aio.insecure_channel(f"127.0.0.1:{etcd.port}")
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers([self])
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        self.end = asyncio.Event()
        self.end_at_once = end_at_once
        self.unanswered_for = unanswered_for
        self.open_watches = 0
        self.watch_metadata: list[dict[str, str]] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def end_watches(self) -> None:
        self.end.set()
        self.end = asyncio.Event()  # watches opened from now on run until told again

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method
        if method == "/etcdserverpb.Watch/Watch":
            return grpc.stream_stream_rpc_method_handler(self._watch)

        async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await self.upstream.unary_unary(method)(request)  # type: ignore[no-any-return]

        return grpc.unary_unary_rpc_method_handler(unary)

    async def _watch(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        self.watch_metadata.append(dict(context.invocation_metadata() or ()))
        if self.unanswered_for is not None:
            await asyncio.sleep(self.unanswered_for)
            return  # the stream ends with status OK, etcd's confirmation never passed on
        call = self.upstream.stream_stream("/etcdserverpb.Watch/Watch")(requests)
        ended = asyncio.ensure_future(self.end.wait())
        self.open_watches += 1
        try:
            while True:
                read = asyncio.ensure_future(call.read())
                await asyncio.wait({read, ended}, return_when=asyncio.FIRST_COMPLETED)
                if ended.done():
                    read.cancel()
                    return  # the stream ends with status OK
                response = read.result()
                if response is grpc.aio.EOF:
                    return
                yield response
                if self.end_at_once:
                    return
        finally:
            self.open_watches -= 1
            ended.cancel()
            call.cancel()

    async def close(self) -> None:
        await self.server.stop(None)
        await self.upstream.close()


class SilencingTcpProxy:
    """A TCP proxy in front of etcd whose connections open so far can be silenced
    (``silence``): no byte flows through them any more, either way, but their sockets
    stay open, as a peer powered off or cut off by a partition looks (no reset).
    Connections made afterwards flow. With ``bytes_per_second``, etcd's bytes pass at
    most that fast (a slow link)."""

    def __init__(self, etcd: EtcdServer, *, bytes_per_second: float | None = None) -> None:
        self.upstream_port = etcd.port
        self.bytes_per_second = bytes_per_second
        self.port = free_port()
        self.connections = 0
        self._flowing: list[asyncio.Event] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> SilencingTcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    def silence(self) -> None:
        for flowing in self._flowing:
            flowing.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers += [writer, up_writer]
        flowing = asyncio.Event()
        flowing.set()
        self._flowing.append(flowing)
        self.connections += 1

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, rate: float | None) -> None:
            while data := await src.read(16384 if rate else 65536):
                await flowing.wait()  # silenced: hold the bytes, forever
                dst.write(data)
                await dst.drain()
                if rate:
                    await asyncio.sleep(len(data) / rate)
            dst.close()

        for src, dst, rate in ((reader, up_writer, None), (up_reader, writer, self.bytes_per_second)):
            task = asyncio.ensure_future(pump(src, dst, rate))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for writer in self._writers:
            writer.close()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
