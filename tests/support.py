"""Test support: waiting, HTTP calls, background load, the featurestore server process
and the test feature repository. Processes and ports: tests/harness.py."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tests.harness import ManagedProcess

if TYPE_CHECKING:
    from featurestore.config import Config
from tests.harness import free_port as free_port  # re-exported: tests import their helpers from here
from tests.harness import wait_until as wait_until

ROOT = Path(__file__).resolve().parent.parent
# A Redis connect timeout (ms) for tests that are not about it: on the loaded 2-core CI
# machine a localhost connect ran past the 250 ms default once ("Timeout connecting").
REDIS_CONNECT_MS = 5000
# The bundled client's deadline (s) in tests not about it: its default, 1 s, covers a new
# channel's connect too, and one stall of the loaded CI machine would fail the join.
CLIENT_DEADLINE_S = 10.0


async def eventually(
    predicate: Callable[[], object], within: float, what: str, interval: float = 0.05
) -> None:
    """Async twin of wait_until: poll ``predicate`` on the running loop. A predicate may
    also return an awaitable (a coroutine function that asks the system under test)."""
    import asyncio
    import inspect

    end = time.monotonic() + within
    while time.monotonic() < end:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await asyncio.sleep(interval)
    raise TimeoutError(f"timed out after {within}s waiting for {what}")


class Followed:
    """How many times a registry's ``changes()`` has yielded so far (``following``)."""

    yields = 0


@contextlib.asynccontextmanager
async def following(registry: Any) -> AsyncIterator[Followed]:
    """A task following ``registry.changes()``, counting its yields; cancelled, and the
    registry closed, on leaving."""
    import asyncio

    followed = Followed()

    async def follow() -> None:
        async for _ in registry.changes():
            followed.yields += 1

    task = asyncio.create_task(follow())
    try:
        yield followed
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await registry.close()


@contextlib.asynccontextmanager
async def guarded_uvicorn(app: Any, guard: Any, **settings: Any) -> AsyncIterator[int]:
    """A real uvicorn serving ``app`` on a free local port under ``guard`` (a
    ``ConnectionGuard``: its limits, and its direct joins when it has some); its port.
    Stopped, and the guard closed, on leaving (a hang fails after 30 s)."""
    import asyncio
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(guard.uvicorn_config(app, access_log=False, **settings))
    task = asyncio.create_task(srv.serve(sockets=[sock]))
    while not srv.started:  # noqa: ASYNC110 - uvicorn has no startup event
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        srv.should_exit = True
        await asyncio.wait_for(task, 30)
        guard.close()


def file_registry_config(tmp_path: Path, overrides: dict[tuple[str, ...], Any] | None = None) -> Config:
    """A server config of project p on a file registry under ``tmp_path / "reg"``, its
    derived kernels cached under ``tmp_path / "cache"``; ``overrides``: more settings."""
    from featurestore.config import load_config

    return load_config(
        None,
        {
            ("project",): "p",
            ("registry", "path"): str(tmp_path / "reg"),
            ("derived", "cache_dir"): str(tmp_path / "cache"),
            **(overrides or {}),
        },
    )


async def one_view_listener_config(tmp_path: Path) -> Config:
    """``file_registry_config`` with one view applied (``v``: ``f`` float64 by ``user_id``),
    serving on free HTTP and gRPC ports: what ``process.Listeners`` needs to start."""
    from featurestore.model import DType, Entity, Feature, FeatureView, make_definitions
    from featurestore.registry.admin import RegistryAdmin
    from featurestore.registry.file import FileRegistry

    user = Entity("user_id", DType.INT64)
    view = FeatureView("v", (user,), (Feature("f", DType.FLOAT64),))
    await RegistryAdmin(FileRegistry(tmp_path / "reg", "p")).apply(make_definitions("p", [user], [view], []))
    return file_registry_config(tmp_path, {("http", "port"): free_port(), ("grpc", "port"): free_port()})


def is_running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed and not reaped yet, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def http_post(
    url: str, body: bytes, headers: dict[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(
        url, data=body, headers={"content-type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


class Background:
    """Call ``step`` in a loop on daemon threads while the ``with`` block runs.

    The threads stop however the block exits (a daemon thread can never hold up the
    session), and an exception in a thread (a failed assertion) is raised again in the
    test's own thread when the block ends, instead of vanishing with the thread."""

    def __init__(self, step: Callable[[], None], threads: int = 1) -> None:
        self._step = step
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self.errors: list[BaseException] = []

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except BaseException as e:
                self.errors.append(e)
                return

    def __enter__(self) -> Background:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.stop()
        if exc_type is None and self.errors:
            raise self.errors[0]


class ServerProcess(ManagedProcess):
    """``featurestore serve`` as a child process on reserved loopback ports, ready once
    ``/readyz`` says so."""

    start_timeout = 30.0
    stop_timeout = 20.0  # a graceful stop drains in-flight requests first

    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, log_path: Path | None = None
    ) -> None:
        self.http_port = free_port()
        self.grpc_port = free_port()
        super().__init__(f"featurestore serve on {self.http_port}", log_path)
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.cwd = ROOT

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "featurestore.cli", "serve", *self.args,
            "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
        ]  # fmt: skip

    def answers(self) -> bool:
        try:
            return http_get(self.url + "/readyz", timeout=1)[0] == 200
        except OSError:
            return False

    def join(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, Any]:
        status, raw, _ = http_post(self.url + "/v1/feature/join", json.dumps(body).encode(), headers)
        return status, json.loads(raw)


class StreamProcessorProcess(ManagedProcess):
    """``featurestore stream run`` as a child process, ready once its metrics answer."""

    start_timeout = 30.0

    def __init__(self, args: list[str], log_path: Path | None = None) -> None:
        self.metrics_port = free_port()
        super().__init__(f"featurestore stream run ({self.metrics_port})", log_path)
        self.args = args
        self.env = dict(os.environ)
        self.cwd = ROOT

    def command(self) -> list[str]:
        return [sys.executable, "-m", "featurestore.cli", "stream", "run", *self.args,
                "--metrics-port", str(self.metrics_port)]  # fmt: skip

    def answers(self) -> bool:
        try:
            return http_get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=1)[0] == 200
        except OSError:
            return False

    def metrics(self) -> str:
        return http_get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2)[1].decode()


# -- the test feature repository ----------------------------------------------------------

N_ITEMS = 500
N_MERCHANTS = 50


def write_test_repo(root: Path, users_parquet: Path) -> Path:
    """Demo views plus an item view, a user x item view (composite key), a string-keyed
    view, a view with every dtype and a short-TTL view. Returns the definitions path.

    The two user views live in store ``default``, the rest in store ``local``: a test
    server maps both to memory, or ``default`` to Redis for a multi-store join."""
    rng = np.random.default_rng(7)
    ts = pa.array(np.full(N_ITEMS, 1_704_067_200_000_000, dtype=np.int64), pa.timestamp("us", tz="UTC"))
    pq.write_table(
        pa.table(
            {
                "item_id": np.arange(1, N_ITEMS + 1, dtype=np.int64),
                "event_timestamp": ts,
                "price": np.round(rng.uniform(1, 100, N_ITEMS), 2),
                "category": pa.array([f"cat{i % 7}" for i in range(N_ITEMS)]),
            }
        ),
        root / "items.parquet",
    )
    users = np.repeat(np.arange(1, 21, dtype=np.int64), 10)
    items = np.tile(np.arange(1, 11, dtype=np.int64), 20)
    n = len(users)
    pq.write_table(
        pa.table(
            {
                "user_id": users,
                "item_id": items,
                "event_timestamp": pa.array(
                    np.full(n, 1_704_067_200_000_000, dtype=np.int64), pa.timestamp("us", tz="UTC")
                ),
                "affinity": (users * 1000 + items).astype(np.float64),
            }
        ),
        root / "user_item.parquet",
    )
    now_us = int(time.time() * 1e6)
    merchants = [f"m-{i}" for i in range(N_MERCHANTS)] + ["quote'\"\\|; DROP TABLE x;--"]
    m = len(merchants)
    pq.write_table(
        pa.table(
            {
                "merchant_id": pa.array(merchants),
                # half the rows are older than the view's 1 h TTL
                "event_timestamp": pa.array(
                    [now_us - (7_200_000_000 if i % 2 else 60_000_000) for i in range(m)],
                    pa.timestamp("us", tz="UTC"),
                ),
                "risk_score": pa.array([i / 10 for i in range(m)], pa.float64()),
                "is_blocked": pa.array([i % 3 == 0 for i in range(m)]),
                "opened_at": pa.array(
                    [1_600_000_000_000_000 + i for i in range(m)], pa.timestamp("us", tz="UTC")
                ),
                "embedding": pa.array([[float(i), 0.5, -1.0] for i in range(m)], pa.list_(pa.float32())),
                "txn_count": pa.array([None if i == 5 else i for i in range(m)], pa.int64()),
                "label": pa.array([None if i == 6 else f"L{i}" for i in range(m)], pa.string()),
            }
        ),
        root / "merchants.parquet",
    )
    defs = f"""
project: demo
entities:
  - {{name: user_id, dtype: int64}}
  - {{name: item_id, dtype: int64}}
  - {{name: merchant_id, dtype: string}}
feature_views:
  - name: user_profile
    entities: [user_id]
    ttl: 3650d
    batch_source: {{path: {users_parquet}}}
    upstream: [warehouse.users]
    features:
      - {{name: age, dtype: int64}}
      - {{name: tenure_days, dtype: int64}}
      - {{name: num_devices, dtype: int64}}
      - {{name: country, dtype: string}}
      - {{name: plan_tier, dtype: string}}
      - {{name: preferred_language, dtype: string}}
      - {{name: lifetime_value, dtype: float64}}
      - {{name: credit_score, dtype: float64}}
  - name: user_activity
    entities: [user_id]
    ttl: 3650d
    batch_source: {{path: {users_parquet}}}
    features:
      - {{name: sessions_7d, dtype: float64}}
      - {{name: sessions_30d, dtype: float64}}
      - {{name: avg_session_minutes, dtype: float64}}
      - {{name: clicks_7d, dtype: float64}}
      - {{name: purchases_30d, dtype: float64}}
      - {{name: spend_30d, dtype: float64}}
      - {{name: days_since_last_login, dtype: float64}}
      - {{name: ctr_30d, dtype: float64}}
  - name: item
    online_store: local
    entities: [item_id]
    batch_source: {{path: items.parquet}}
    features:
      - {{name: price, dtype: float64}}
      - {{name: category, dtype: string}}
  - name: user_item
    online_store: local
    entities: [user_id, item_id]
    batch_source: {{path: user_item.parquet}}
    upstream: [user_profile:age, item:price, warehouse.clicks]
    features:
      - {{name: affinity, dtype: float64}}
  - name: merchant
    online_store: local
    entities: [merchant_id]
    ttl: 1h
    batch_source: {{path: merchants.parquet}}
    features:
      - {{name: risk_score, dtype: float64}}
      - {{name: is_blocked, dtype: bool}}
      - {{name: opened_at, dtype: timestamp}}
      - {{name: embedding, dtype: float32_vector}}
      - {{name: txn_count, dtype: int64}}
      - {{name: label, dtype: string}}
feature_services:
  - name: ranker_v1
    features: [user_profile, user_activity]
  - name: candidates_v1
    features: [user_profile:age, item:price, item:category, user_item:affinity]
"""
    path = root / "features.yaml"
    path.write_text(defs)
    return path


MERCHANTS = [f"m-{i}" for i in range(N_MERCHANTS)] + ["quote'\"\\|; DROP TABLE x;--"]


def listed(values: Any) -> list[Any]:
    """A join result column's values as a list, None for null: a derived float64 feature
    comes as an ndarray with NaN for null from derived.evaluate.ARRAY_ROWS rows on."""
    if isinstance(values, np.ndarray):
        return [None if v != v else v for v in values.tolist()]
    return list(values)
