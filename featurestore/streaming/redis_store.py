"""Redis ``TileStore``: one string per (stream view, entity key), its tiles in order.

Layout (docs/streaming.md):

* ``fs:{project}:{view}:t{layout}:k:{entity_key}`` -> the key's tile records, sorted by
  tile index, each ``width`` little-endian float64 (``tiles.py``; the first is the tile
  index). It expires when idle for the longest window + one tile + the allowed
  lateness + 60 s of clock skew, and as many tiles more as its newest tile is ahead of the
  writer's clock (``store.expiry_ms``); records no window reaches any more, even a
  server's whose clock is up to 60 s behind the writer's, are dropped by a write
  (``APPLY``, ``store.kept_tiles``).
* ``fs:{project}:{view}:t{layout}:marks`` -> hash ``{topic:partition: "offset watermark"}``,
  and ``{topic:partition:recent: "offset watermark t1 t2 ..."}``: the partition's recent
  event times (``PartitionMark.recent``), valid only beside that same mark.
  It expires when no batch was written for the tiles' longest idle time (a key ahead
  included) + 7 days (``store.marks_ttl_seconds``): after every tile written with it.

A read is one ``MGET`` of the keys (no script: the string is what the windows are
computed from). One Lua script applies a batch: it compares every partition's stored
offset with the one the processor expects and checks every key it will write holds
records (a string of whole records: a key of another type or length would fail the
script half-way, and Redis keeps a failed script's writes), and only when all is well
merges the records into each key's string in place (from the batch's first tile on:
records are fixed-size and sorted; add, min, max, newest-last, slot by slot) and sets
the new marks, atomically (Redis runs a script alone); ``APPLY`` says what a write
costs. The layout hash is in every key: a changed definition starts fresh tiles and
marks instead of misreading the old packing.

Redis Cluster: a script may only touch keys of one slot, and a batch touches many
entity keys; stream views therefore need a standalone Redis (or a primary with
replicas) and ``cluster: true`` is refused with that reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis import Redis
from redis.exceptions import NoScriptError, ResponseError

from featurestore import metrics
from featurestore.errors import InvalidArgument
from featurestore.model import FeatureView
from featurestore.sources.redis_pool import CONNECTION_ERRORS, NOT_RETRIED, LeanPool
from featurestore.sources.redis_read import exchange
from featurestore.sources.redis_wire import pack_mget
from featurestore.streaming.store import (
    Eviction,
    PartitionMark,
    TileBatch,
    kept_tiles,
    marks_ttl_seconds,
    ttl_seconds,
)
from featurestore.streaming.tiles import view_layout

# ARGV: ops, ttl ms, marks ttl ms, oldest tile kept, #partitions, SMALL, TRIM_BUDGET, TINY, the
# writer's tile now, the tile in ms, then per partition (field, expected offset, new offset,
# new watermark, its recent event times or ''), then per key (key index, #records, records
# sorted by tile, concatenated).
#
# A write costs what it writes, not what the keys hold (a batch is applied while every other
# client of this Redis waits): a key's records from the batch's first tile on are read
# (GETRANGE), merged and written back in place (SETRANGE); usually that is its newest record
# or none (the tile is new: an append). Rewriting each key's whole string at every write held
# Redis 1.2 s for a batch of 3,300 keys of 1,440 one-minute tiles (81 KB each; review round
# 20). A key that a batch reaches back into (late events, not the newest tile or a new one) is
# read and written whole (GET, SET, where finding each record's place takes a call per probe)
# when it is at most TINY bytes, or SMALL for three records or more: one late event into each
# of 5,000 keys of 6.8 KB held Redis 198 ms whole, 120-132 in place (review round 22);
# appended to in place, 3,300 keys of 30 records took 20-27 ms, 43-52 ms whole
# (benchmarks.stream_writes). Such a write drops the key's records no window reaches.
# Otherwise a key drops those records together once they make up a quarter of it, which
# rewrites it: keys written every tile since the same start reach that in the same batch
# (3,300 such keys held Redis ~0.5 s; review round 21), so one script rewrites about
# TRIM_BUDGET bytes of them (the last key may cross it), and the others trim at a later write.
# The price is memory: Redis allocates a string that SETRANGE extends greedily (double its
# length below 1 MB), so a key takes up to ~2.5x its live records (docs/streaming.md, "What a
# write costs Redis").
SMALL = 8192
TINY = 2048
TRIM_BUDGET = 1 << 20
APPLY = """
local ops = ARGV[1]
local ttl = tonumber(ARGV[2])
local oldest = tonumber(ARGV[4])
local np = tonumber(ARGV[5])
local small = tonumber(ARGV[6])
local budget = tonumber(ARGV[7])
local tiny = tonumber(ARGV[8])
local now_tile = tonumber(ARGV[9])
local tile_ms = tonumber(ARGV[10])
local w = string.len(ops)
local rb = 8 * w
local fmt = '<' .. string.rep('d', w)
local i = 11
for p = 1, np do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  local off = '-1'
  if cur then off = string.match(cur, '^(%S+)') end
  if off ~= ARGV[i + 1] then return {0, ARGV[i], off} end
  i = i + 5
end
-- everything that can fail before the first write: Redis does not undo a failed script's writes
local first, lens = i, {}
while i <= #ARGV do
  local key = KEYS[tonumber(ARGV[i])]
  local len = redis.pcall('STRLEN', key)
  if type(len) == 'table' then return redis.error_reply(len.err .. ' (tile key ' .. key .. ')') end
  if len % rb ~= 0 then
    return redis.error_reply('ERR tile key ' .. key .. ' holds ' .. len .. ' bytes, not records of ' .. rb)
  end
  lens[#lens + 1] = len / rb
  i = i + 3
end
local j = 11
for p = 1, np do
  local mark = ARGV[j + 2] .. ' ' .. ARGV[j + 3]
  redis.call('HSET', KEYS[1], ARGV[j], mark)
  if ARGV[j + 4] == '' then redis.call('HDEL', KEYS[1], ARGV[j] .. ':recent')
  else redis.call('HSET', KEYS[1], ARGV[j] .. ':recent', mark .. ' ' .. ARGV[j + 4]) end
  j = j + 5
end
if np > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
local function tile(s, k) return (struct.unpack('<d', s, (k - 1) * rb + 1)) end
local function rec(s, k) return string.sub(s, (k - 1) * rb + 1, k * rb) end
local function at(key, k) return tile(redis.call('GETRANGE', key, (k - 1) * rb, (k - 1) * rb + 7), 1) end
-- the first record from lo (before hi) whose tile is >= t, ``probe`` reading record k's tile:
-- ``tile`` in a string of records, ``at`` in a key (8 bytes a probe)
local function first_at_least(probe, src, lo, hi, t)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if probe(src, mid) < t then lo = mid + 1 else hi = mid end
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
i = first
local e = 0
while i <= #ARGV do
  e = e + 1
  local key = KEYS[tonumber(ARGV[i])]
  local nrec = tonumber(ARGV[i + 1])
  local recs = ARGV[i + 2]
  local n = lens[e]
  local r0 = 1
  while r0 <= nrec and tile(recs, r0) < oldest do r0 = r0 + 1 end
  if r0 <= nrec then  -- (a batch no window reaches writes nothing)
    local t0 = tile(recs, r0)
    local k = n + 1  -- the key's first record the write reads: at or after the batch's first tile
    local last = t0 - 1
    if n > 0 then last = at(key, n) end
    -- a small key the batch reaches back into with several records is read and written
    -- whole (two calls, where finding each record's place takes a call per probe)
    local whole = last > t0 and (n * rb <= tiny or (nrec - r0 >= 2 and n * rb <= small))
    if whole then k = 1
    elseif last == t0 then k = n
    elseif last > t0 then k = first_at_least(at, key, 1, n, t0)
    end
    local tail = ''
    if k <= n then tail = redis.call('GETRANGE', key, (k - 1) * rb, -1) end
    local m = n - k + 1
    local s = first_at_least(tile, tail, 1, m + 1, oldest)  -- (records no window reaches: only a whole key's)
    local out = {}
    for r = r0, nrec do
      local t = tile(recs, r)
      local q = first_at_least(tile, tail, s, m + 1, t)
      if q > s then out[#out + 1] = string.sub(tail, (s - 1) * rb + 1, (q - 1) * rb) end
      if q <= m and tile(tail, q) == t then
        out[#out + 1] = merge(rec(tail, q), rec(recs, r))
        s = q + 1
      else
        out[#out + 1] = rec(recs, r)
        s = q
      end
    end
    if s <= m then out[#out + 1] = string.sub(tail, (s - 1) * rb + 1) end
    local merged = table.concat(out)
    -- merged ends with the key's newest record: a tile ahead of the clock (an event from a
    -- clock ahead) keeps the key until that tile's windows are served (store.expiry_ms)
    local px = ttl
    local newest = tile(merged, string.len(merged) / rb)
    if newest > now_tile then px = ttl + (newest - now_tile) * tile_ms end
    if whole then
      redis.call('SET', key, merged, 'PX', px)
    else
      redis.call('SETRANGE', key, (k - 1) * rb, merged)
      n = k - 1 + string.len(merged) / rb
      local head = at(key, 1)
      if head < oldest and (oldest - head) * 4 >= n and budget > 0 then
        local keep = first_at_least(at, key, 1, n + 1, oldest)
        if (keep - 1) * 4 >= n then
          redis.call('SET', key, redis.call('GETRANGE', key, (keep - 1) * rb, -1))
          budget = budget - (n - keep + 1) * rb
        end
      end
      redis.call('PEXPIRE', key, px)
    end
  end
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
        """Each partition's ``topic:partition`` field, with the recent event times of its
        ``topic:partition:recent`` field when that was written with the same mark (a
        processor of before 2026-12-07 moves the mark without it; a topic name has no ':')."""
        raw: dict[bytes, bytes] = self.client.hgetall(self._prefix(view) + "marks")  # type: ignore[assignment]
        out: dict[int, PartitionMark] = {}
        recent: dict[str, list[str]] = {}
        for field, value in raw.items():
            t, _, partition = field.decode().rpartition(":")
            if t == topic:
                offset, watermark = value.decode().split()
                out[int(partition)] = PartitionMark(int(offset), int(watermark))
            elif partition == "recent":
                recent[t] = value.decode().split()
        for p, mark in out.items():
            times = recent.get(f"{topic}:{p}", [])
            if times[:2] == [str(mark.offset), str(mark.watermark_us)]:
                out[p] = mark._replace(recent=tuple(map(int, times[2:])))
        return out

    def apply(self, view: FeatureView, batch: TileBatch) -> str | None:
        layout = view_layout(view)
        prefix = self._prefix(view)
        keys = [prefix + "marks"]
        args: list[Any] = [
            layout.ops,
            ttl_seconds(view) * 1000,
            marks_ttl_seconds(view) * 1000,
            batch.now_tile - kept_tiles(layout),
            len(batch.marks),
            SMALL,
            TRIM_BUDGET,
            TINY,
            batch.now_tile,
            layout.tile_us // 1000,
        ]
        for partition, (expected, mark) in batch.marks.items():
            field, recent = f"{batch.topic}:{partition}", " ".join(map(str, mark.recent))
            args += [field, str(expected), str(mark.offset), str(mark.watermark_us), recent]
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

    def eviction(self) -> Eviction | None:
        """Redis's ``maxmemory-policy`` and ``maxmemory``; None where ``CONFIG`` is renamed
        or refused (ACL)."""
        try:
            got: dict[Any, Any] = self.client.config_get("maxmemory*")
        except ResponseError:
            return None
        text = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                for k, v in got.items()}  # fmt: skip
        if "maxmemory-policy" not in text:
            return None
        return Eviction(text["maxmemory-policy"], int(text.get("maxmemory") or 0))

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
