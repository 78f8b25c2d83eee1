-- wrk script: POST a join body with BATCH user_ids and all 16 features, the keys drawn
-- uniformly (KEYS=uniform, the Feast peer's wrk_getfeatures.lua) or from a Zipf law
-- (KEYS=zipf, exponent ZIPF_S=1.1: rank r is asked with weight 1/r^s) over 1..N_USERS.
-- Zipf ranks map to user ids by a fixed permutation (rank * 7919 mod N + 1), so the hot
-- keys are spread over the id space. Bodies are pre-built (POOL per thread, seeded), so
-- drawing keys costs nothing during the run. The default POOL holds three draws per user
-- (batch 1: 300,000 bodies, ~200 MB; batch 100: 4,096): the peer's 4,096 at batch 1 were
-- a hot set of ~4,000 users that a server's cache holds whole. The body shape is the peer's, so the same
-- script drives Feast (/get-online-features) and featurestore (/v1/feature/join).
-- Keys come from SEED (default the clock). benchmarks.run sets one SEED per point (batch,
-- concurrency), the same for every server, so every server gets the same keys at a point;
-- bench.py's warm-up (LABEL=warmup) draws another sequence from the same SEED. A server must
-- not be sent a sequence it has just been sent: with one fixed seed every run replayed the
-- same sequence from its start, so a measured run asked for the keys of the warm-up before
-- it in the same order, each just as the cache's TTL expired it (a cached server's hit rate
-- read 28% where fresh draws read its steady state).
-- Env: BATCH (1), N_USERS (100000), POOL (max(4096, 3 * N_USERS / BATCH)), KEYS (uniform), ZIPF_S (1.1),
-- SEED (the clock), LABEL.
local batch   = tonumber(os.getenv("BATCH") or "1")
local n_users = tonumber(os.getenv("N_USERS") or "100000")
local pool_n  = tonumber(os.getenv("POOL") or "0")
if pool_n <= 0 then pool_n = math.max(4096, math.ceil(3 * n_users / batch)) end
local keys    = os.getenv("KEYS") or "uniform"
local zipf_s  = tonumber(os.getenv("ZIPF_S") or "1.1")
local label   = os.getenv("LABEL") or ""
local seed    = tonumber(os.getenv("SEED") or "") or os.time()

local features = '["user_profile:age","user_profile:tenure_days","user_profile:num_devices",' ..
  '"user_profile:country","user_profile:plan_tier","user_profile:preferred_language",' ..
  '"user_profile:lifetime_value","user_profile:credit_score",' ..
  '"user_activity:sessions_7d","user_activity:sessions_30d","user_activity:avg_session_minutes",' ..
  '"user_activity:clicks_7d","user_activity:purchases_30d","user_activity:spend_30d",' ..
  '"user_activity:days_since_last_login","user_activity:ctr_30d"]'

local thread_no = 0
function setup(thread)
  thread_no = thread_no + 1
  thread:set("tid", thread_no)
end

local cdf = nil
local function zipf_id()
  local u = math.random()
  local lo, hi = 1, n_users
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return ((lo - 1) * 7919) % n_users + 1
end

local pool = {}
local idx = 0
function init(args)
  math.randomseed(seed * 64 + (label == "warmup" and 32 or 0) + (tid or 1))
  if keys == "zipf" then
    cdf = {}
    local total = 0
    for r = 1, n_users do total = total + 1 / r ^ zipf_s; cdf[r] = total end
    for r = 1, n_users do cdf[r] = cdf[r] / total end
  elseif keys ~= "uniform" then
    error("KEYS must be uniform or zipf, got " .. keys)
  end
  local headers = { ["Content-Type"] = "application/json" }
  for i = 1, pool_n do
    local ids = {}
    for j = 1, batch do
      ids[j] = tostring(cdf and zipf_id() or math.random(1, n_users))
    end
    local body = '{"features":' .. features .. ',"entities":{"user_id":[' ..
                 table.concat(ids, ",") .. ']}}'
    pool[i] = wrk.format("POST", nil, headers, body)
  end
end

function request()
  idx = idx % pool_n + 1
  return pool[idx]
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    'RESULT {"tool":"wrk","label":"%s","keys":"%s","batch":%d,"requests":%d,"duration_s":%.3f,' ..
    '"qps":%.1f,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"p999_ms":%.3f,' ..
    '"mean_ms":%.3f,"max_ms":%.3f,"err_connect":%d,"err_read":%d,"err_write":%d,' ..
    '"err_status":%d,"err_timeout":%d,"bytes":%d}\n',
    label, keys, batch, summary.requests, secs, summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency:percentile(99.9) / 1000,
    latency.mean / 1000, latency.max / 1000,
    e.connect, e.read, e.write, e.status, e.timeout, summary.bytes))
end
