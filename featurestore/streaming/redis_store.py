"""Redis ``TileStore``: one string per (stream view, entity key), its tiles in order.

Layout (docs/streaming.md):

* ``fs:{project}:{view}:t{layout}:k:{entity_key}`` -> the key's tile records, sorted by
  tile index, each ``width`` little-endian float64 (``tiles.py``; the first is the tile
  index). It expires when idle for the longest window + one tile + the allowed
  lateness, and every write drops the records no window reaches any more.
* ``fs:{project}:{view}:t{layout}:marks`` -> hash ``{topic:partition: "offset watermark"}``.
  It expires when no batch was written for the tiles' idle time + 7 days
  (``store.marks_ttl_seconds``): after every tile written with it.

A read is one ``MGET`` of the keys (no script: the string is what the windows are
computed from). One Lua script applies a batch: it compares every partition's stored
offset with the one the processor expects, and only when all match merges the records
into each key's string (binary search for the tile: records are fixed-size and sorted;
add, min, max, newest-last, slot by slot) and sets the new marks, atomically (Redis runs
a script alone). The layout hash is in every key: a changed definition starts fresh
tiles and marks instead of misreading the old packing.

Redis Cluster: a script may only touch keys of one slot, and a batch touches many
entity keys; stream views therefore need a standalone Redis (or a primary with
replicas) and ``cluster: true`` is refused with that reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis import Redis
from redis.exceptions import NoScriptError

from featurestore import metrics
from featurestore.errors import InvalidArgument
from featurestore.model import FeatureView
from featurestore.sources.redis_pool import CONNECTION_ERRORS, NOT_RETRIED, LeanPool
from featurestore.sources.redis_read import exchange
from featurestore.sources.redis_wire import pack_mget
from featurestore.streaming.store import PartitionMark, TileBatch, marks_ttl_seconds, ttl_seconds
from featurestore.streaming.tiles import view_layout

# ARGV: ops, ttl ms, marks ttl ms, oldest tile kept, #partitions, then per partition
# (field, expected offset, new offset, new watermark), then per key (key index, #records,
# records sorted by tile, concatenated).
APPLY = """
local ops = ARGV[1]
local ttl = tonumber(ARGV[2])
local oldest = tonumber(ARGV[4])
local np = tonumber(ARGV[5])
local i = 6
for p = 1, np do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  local off = '-1'
  if cur then off = string.match(cur, '^(%S+)') end
  if off ~= ARGV[i + 1] then return {0, ARGV[i], off} end
  i = i + 4
end
local j = 6
for p = 1, np do
  redis.call('HSET', KEYS[1], ARGV[j], ARGV[j + 2] .. ' ' .. ARGV[j + 3])
  j = j + 4
end
if np > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
local w = string.len(ops)
local rb = 8 * w
local fmt = '<' .. string.rep('d', w)
local function tile(s, k) return (struct.unpack('<d', s, (k - 1) * rb + 1)) end
local function first_at_least(s, lo, hi, t)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if tile(s, mid) < t then lo = mid + 1 else hi = mid end
  end
  return lo
end
local function merge(old, new)
  local a = {struct.unpack(fmt, old)}
  local b = {struct.unpack(fmt, new)}
  for s = 1, w do
    local op = string.sub(ops, s, s)
    if op == 'a' or op == 'c' then a[s] = a[s] + b[s]
    elseif op == 'm' then if b[s] < a[s] then a[s] = b[s] end
    elseif op == 'M' then if b[s] > a[s] then a[s] = b[s] end
    elseif op == 'T' then if b[s] >= a[s] then a[s] = b[s]; a[s + 1] = b[s + 1] end
    end
  end
  return struct.pack(fmt, unpack(a, 1, w))
end
while i <= #ARGV do
  local key = KEYS[tonumber(ARGV[i])]
  local nrec = tonumber(ARGV[i + 1])
  local recs = ARGV[i + 2]
  local cur = redis.call('GET', key) or ''
  local n = string.len(cur) / rb
  local pos = first_at_least(cur, 1, n + 1, oldest)
  local out = {}
  for r = 1, nrec do
    local rec = string.sub(recs, (r - 1) * rb + 1, r * rb)
    local t = tile(rec, 1)
    if t >= oldest then
      local k = first_at_least(cur, pos, n + 1, t)
      if k > pos then out[#out + 1] = string.sub(cur, (pos - 1) * rb + 1, (k - 1) * rb) end
      if k <= n and tile(cur, k) == t then
        out[#out + 1] = merge(string.sub(cur, (k - 1) * rb + 1, k * rb), rec)
        pos = k + 1
      else
        out[#out + 1] = rec
        pos = k
      end
    end
  end
  if pos <= n then out[#out + 1] = string.sub(cur, (pos - 1) * rb + 1) end
  redis.call('SET', key, table.concat(out), 'PX', ttl)
  i = i + 3
end
return {1}
"""


class RedisTileStore:
    def __init__(
        self, name: str, project: str, url: str, cluster: bool = False, pool_size: int = 64, **connection: Any
    ) -> None:
        if cluster:
            raise InvalidArgument(
                f"stores.{name}: stream views need a standalone Redis: a batch is applied by one "
                "script over many keys, which Redis Cluster allows only within one hash slot"
            )
        self.name = name
        self.project = project
        self._url = url
        self._connection = connection
        self._sync: Redis | None = None
        self._pool: LeanPool | None = None  # reads (serving)
        self._pool_size = pool_size
        self._sha: str | None = None

    def _prefix(self, view: FeatureView) -> str:
        return f"fs:{self.project}:{view.name}:t{view.layout}:"

    @property
    def client(self) -> Redis:
        if self._sync is None:
            self._sync = Redis.from_url(self._url, socket_timeout=10, **self._connection)
        return self._sync

    def marks(self, view: FeatureView, topic: str) -> dict[int, PartitionMark]:
        raw: dict[bytes, bytes] = self.client.hgetall(self._prefix(view) + "marks")  # type: ignore[assignment]
        out: dict[int, PartitionMark] = {}
        for field, value in raw.items():
            t, _, partition = field.decode().rpartition(":")
            if t == topic:
                offset, watermark = value.decode().split()
                out[int(partition)] = PartitionMark(int(offset), int(watermark))
        return out

    def apply(self, view: FeatureView, batch: TileBatch) -> str | None:
        layout = view_layout(view)
        prefix = self._prefix(view)
        keys = [prefix + "marks"]
        args: list[Any] = [
            layout.ops,
            ttl_seconds(view) * 1000,
            marks_ttl_seconds(view) * 1000,
            batch.now_tile - layout.retention_tiles,
            len(batch.marks),
        ]
        for partition, (expected, mark) in batch.marks.items():
            args += [f"{batch.topic}:{partition}", str(expected), str(mark.offset), str(mark.watermark_us)]
        pack = layout.pack
        for key, records in batch.records.items():
            keys.append(prefix + "k:" + key)
            tiles = sorted(records) if len(records) > 1 else list(records)
            args += [len(keys), len(tiles), b"".join([pack(records[t]) for t in tiles])]
        if self._sha is None:
            self._sha = self.client.script_load(APPLY)
        try:
            result = self.client.evalsha(self._sha, len(keys), *keys, *args)
        except NoScriptError:  # the script cache was flushed (Redis restarted): load it again
            self._sha = self.client.script_load(APPLY)
            result = self.client.evalsha(self._sha, len(keys), *keys, *args)
        if int(result[0]) == 1:
            return None
        return f"{result[1].decode()}: stored offset {result[2].decode()}, not the one expected"

    async def read(self, view: FeatureView, keys: Sequence[str]) -> list[bytes | None]:
        """One MGET on a pooled connection, packed as the plain Redis views' reads are."""
        pool = self._pool
        if pool is None:
            # TCP keepalive comes with the store's connection arguments (never for unix://)
            pool = self._pool = LeanPool(
                self._url,
                self._pool_size,
                opened=metrics.SOURCE_CONNECTIONS_OPENED.labels(self.name).inc,
                **self._connection,
            )
        prefix = self._prefix(view) + "k:"
        packed = pack_mget([prefix + key for key in keys])
        try:
            [reply] = await exchange(pool, packed, 1)
        except NOT_RETRIED:
            raise
        except CONNECTION_ERRORS:  # a socket closed while it idled: once more, on fresh ones
            metrics.SOURCE_READ_RETRIES.labels(self.name).inc()
            pool.reset()
            [reply] = await exchange(pool, packed, 1)
        return reply  # type: ignore[no-any-return]

    def table_uri(self, view: FeatureView) -> str:
        return f"redis://fs/{self.project}/{view.name}/tiles"

    def reset(self) -> None:
        if self._pool is not None:
            self._pool.reset()

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        self.close()
