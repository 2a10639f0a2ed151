//! The Lua scripts that keep the shared budgets and leases in Redis. Each runs atomically
//! and takes the time from Redis (`TIME`), so the nodes' clocks never decide a count.
//!
//! Keys of one mailbox: `rate:<mailbox>` (sorted set: one member per send, scored by when it
//! counts from), `daily:<mailbox>` (hash: recipients per minute bucket and their `total`),
//! `minutes:<mailbox>` (sorted set of the buckets in the hash, to age them out in order),
//! `conn:<channel>:<mailbox>` (sorted set of leases scored by expiry). `epoch` names the
//! data set: a Redis that lost its data (restarted empty, flushed) has none or another, and
//! each node then puts its own recent sends back before counting on.
//!
//! A send is *in flight* from its take until it finishes; meanwhile it counts as finishing
//! `inflight_ms` from its start (it never counts for less than it will), and its finish moves
//! it to when it finished.

use redis::Script;

/// Shared by the budget scripts: Redis's time in ms, and numbers as exact decimal strings.
const PRELUDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function fmt(x) return string.format('%.0f', x) end
local DAY = 86400000
local MINUTE = 60000
-- Takes n recipients out of a daily bucket (KEYS[2]), and the emptied bucket out of the
-- list (KEYS[3]); the day's total is the caller's.
local function unbucket(bucket, n)
  local have = tonumber(redis.call('HGET', KEYS[2], bucket) or '0')
  if have == n then
    redis.call('HDEL', KEYS[2], bucket)
    redis.call('ZREM', KEYS[3], bucket)
  else
    redis.call('HINCRBY', KEYS[2], bucket, -n)
  end
end
"#;

/// KEYS: rate, daily, minutes, epoch.
/// ARGV: known epoch, epoch to create, period ms, rate limit, daily limit, recipients,
/// member, in-flight ms, poll ms, deadline ms.
/// Returns {"ok", now, bucket} | {"rate"|"daily", until, now} | {"epoch", epoch, now} |
/// {"late", now}: run after the node gave up waiting (Redis was paused with the call
/// queued), when the node has counted the send elsewhere.
const TAKE: &str = r#"
if now > tonumber(ARGV[10]) then return {'late', fmt(now)} end
local epoch = redis.call('GET', KEYS[4])
if not epoch then
  redis.call('SET', KEYS[4], ARGV[2])
  epoch = ARGV[2]
end
if epoch ~= ARGV[1] then return {'epoch', epoch, fmt(now)} end
local period = tonumber(ARGV[3])
local rate_limit = tonumber(ARGV[4])
local daily_limit = tonumber(ARGV[5])
local recipients = tonumber(ARGV[6])
local inflight = tonumber(ARGV[8])
local poll = tonumber(ARGV[9])

redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
local used = redis.call('ZCARD', KEYS[1])
if used + 1 > rate_limit and used > 0 then
  -- Room appears when the (used - limit + 1)th oldest send ages out.
  local e = redis.call('ZRANGE', KEYS[1], used - rate_limit, used - rate_limit, 'WITHSCORES')
  local at = tonumber(e[2])
  local later = at + period
  if at > now then later = now + poll end
  return {'rate', fmt(later), fmt(now)}
end

-- Buckets age out a day after their minute ends.
local first_live = math.floor((now - DAY) / MINUTE)
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', first_live - 1)
for _, m in ipairs(expired) do
  local n = tonumber(redis.call('HGET', KEYS[2], m) or '0')
  redis.call('HINCRBY', KEYS[2], 'total', -n)
  redis.call('HDEL', KEYS[2], m)
end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', first_live - 1) end
local total = tonumber(redis.call('HGET', KEYS[2], 'total') or '0')
if total + recipients > daily_limit and total > 0 then
  local freed = 0
  for _, m in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    freed = freed + tonumber(redis.call('HGET', KEYS[2], m) or '0')
    if total - freed + recipients <= daily_limit then
      local later = (tonumber(m) + 1) * MINUTE + DAY
      if tonumber(m) * MINUTE > now then later = now + poll end
      return {'daily', fmt(later), fmt(now)}
    end
  end
  return {'daily', fmt(now + poll), fmt(now)}
end

local due = now + inflight
redis.call('ZADD', KEYS[1], due, ARGV[7])
redis.call('PEXPIRE', KEYS[1], period + inflight + MINUTE)
local bucket = math.floor(due / MINUTE)
redis.call('HINCRBY', KEYS[2], fmt(bucket), recipients)
redis.call('HINCRBY', KEYS[2], 'total', recipients)
redis.call('ZADD', KEYS[3], bucket, fmt(bucket))
redis.call('PEXPIRE', KEYS[2], DAY + inflight + 2 * MINUTE)
redis.call('PEXPIRE', KEYS[3], DAY + inflight + 2 * MINUTE)
return {'ok', fmt(now), fmt(bucket)}
"#;

/// KEYS: rate, daily, minutes, epoch. ARGV: epoch, member, recipients, the take's bucket.
/// Moves a send from its in-flight place to now. Returns now, or nothing under another epoch.
const FINISH: &str = r#"
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return false end
redis.call('ZADD', KEYS[1], 'XX', now, ARGV[2])
local n = tonumber(ARGV[3])
local have = tonumber(redis.call('HGET', KEYS[2], ARGV[4]) or '0')
if n > 0 and have >= n then
  unbucket(ARGV[4], n)
  local bucket = math.floor(now / MINUTE)
  redis.call('HINCRBY', KEYS[2], fmt(bucket), n)
  redis.call('ZADD', KEYS[3], bucket, fmt(bucket))
end
return fmt(now)
"#;

/// KEYS: rate, daily, minutes, epoch. ARGV: epoch, member, recipients, the take's bucket.
/// Takes back a send in flight that never reached the upstream, as if it had not been
/// taken. Returns 1, 0 when Redis does not have it, or nothing under another epoch.
const GIVE_BACK: &str = r#"
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return false end
if redis.call('ZREM', KEYS[1], ARGV[2]) == 0 then return 0 end
local n = tonumber(ARGV[3])
local have = tonumber(redis.call('HGET', KEYS[2], ARGV[4]) or '0')
local back = math.min(n, have)
if back > 0 then
  unbucket(ARGV[4], back)
  redis.call('HINCRBY', KEYS[2], 'total', -back)
end
return 1
"#;

/// KEYS: rate, daily, minutes, epoch. ARGV: epoch, then (member, at ms, recipients, rate
/// period ms) for each send this node made that Redis does not have. Returns how many, or
/// -1 under another epoch.
const PUSH: &str = r#"
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return -1 end
local longest = 0
for i = 2, #ARGV, 4 do
  local at = tonumber(ARGV[i + 1])
  local n = tonumber(ARGV[i + 2])
  local period = tonumber(ARGV[i + 3])
  if period > longest then longest = period end
  if at > now - period then redis.call('ZADD', KEYS[1], at, ARGV[i]) end
  local bucket = math.floor(at / MINUTE)
  if (bucket + 1) * MINUTE + DAY > now and n > 0 then
    redis.call('HINCRBY', KEYS[2], fmt(bucket), n)
    redis.call('HINCRBY', KEYS[2], 'total', n)
    redis.call('ZADD', KEYS[3], bucket, fmt(bucket))
  end
end
-- At least as long as the takes' own expiry (in flight: 10 minutes ahead).
redis.call('PEXPIRE', KEYS[1], longest + 11 * MINUTE)
redis.call('PEXPIRE', KEYS[2], DAY + 12 * MINUTE)
redis.call('PEXPIRE', KEYS[3], DAY + 12 * MINUTE)
return (#ARGV - 1) / 4
"#;

/// KEYS: rate, daily, minutes. ARGV: rate period ms, rate limit, daily limit. This
/// mailbox's use of its budgets: {messages in the rate window, recipients in the day, when a
/// one-recipient message may start (ms; 0: now)}. Counts nothing.
const USAGE: &str = r#"
local period = tonumber(ARGV[1])
local rate_limit = tonumber(ARGV[2])
local daily_limit = tonumber(ARGV[3])
local rate = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. fmt(now - period), '+inf', 'WITHSCORES')
local sent = #rate / 2
local next_send = 0
if sent >= rate_limit and sent > 0 then
  local at = tonumber(rate[2 * (sent - rate_limit) + 2])
  next_send = at + period
  if at > now then next_send = now + 100 end
end
local first_live = math.floor((now - DAY) / MINUTE)
local buckets = redis.call('ZRANGEBYSCORE', KEYS[3], first_live, '+inf')
local total = 0
for _, m in ipairs(buckets) do
  total = total + tonumber(redis.call('HGET', KEYS[2], m) or '0')
end
if total + 1 > daily_limit and total > 0 then
  local freed = 0
  for _, m in ipairs(buckets) do
    freed = freed + tonumber(redis.call('HGET', KEYS[2], m) or '0')
    if total - freed + 1 <= daily_limit then
      local later = (tonumber(m) + 1) * MINUTE + DAY
      if later > next_send then next_send = later end
      break
    end
  end
end
return {sent, total, fmt(next_send)}
"#;

/// KEYS: a lease set. ARGV: lease id, limit, ttl ms, poll ms, deadline ms.
/// Takes (or renews) the lease if fewer than `limit` live ones are held.
/// Returns {"ok"} | {"full", when to look again} | {"late"} (see TAKE).
const LEASE: &str = r#"
if now > tonumber(ARGV[5]) then return {'late'} end
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], 2 * ttl)
  return {'ok'}
end
return {'full', fmt(now + tonumber(ARGV[4]))}
"#;

/// KEYS: lease sets; ARGV: ttl ms, then the lease id in each set, in order. Keeps this
/// node's leases alive (and puts back any a Redis restart lost: the connections exist).
const RENEW: &str = r#"
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', key, 2 * ttl)
end
return #KEYS
"#;

/// KEYS: nodes (sorted set of last beats), epoch, node details (hash). ARGV: node name,
/// ttl ms, what the node says of itself (JSON, with its `instance`), an epoch to create if
/// there is none, this node's instance, "claim" (at start) or "beat".
/// A name whose last beat is within `ttl` and whose details name another instance is
/// *taken*: a claim then records nothing and returns {"taken", now, their details, ms since
/// their beat}. Otherwise records the beat and forgets nodes silent for `ttl`; returns
/// {"ok", now, their details if the name is taken (a clash found while running) or "",
/// epoch, then each live node's name, last beat, details}.
const HEARTBEAT: &str = r#"
local ttl = tonumber(ARGV[2])
local seen = redis.call('ZSCORE', KEYS[1], ARGV[1])
local before = redis.call('HGET', KEYS[3], ARGV[1])
local clash = ''
if seen and before and tonumber(seen) > now - ttl then
  local ok, other = pcall(cjson.decode, before)
  if ok and type(other) == 'table' and type(other.instance) == 'string'
      and other.instance ~= ARGV[5] then
    clash = before
  end
end
if clash ~= '' and ARGV[6] == 'claim' then
  return {'taken', fmt(now), clash, fmt(now - tonumber(seen))}
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
for _, name in ipairs(gone) do redis.call('HDEL', KEYS[3], name) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  redis.call('SET', KEYS[2], ARGV[4])
  epoch = ARGV[4]
end
local reply = {'ok', fmt(now), clash, epoch}
local live = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #live, 2 do
  table.insert(reply, live[i])
  table.insert(reply, live[i + 1])
  table.insert(reply, redis.call('HGET', KEYS[3], live[i]) or '{}')
end
return reply
"#;

pub struct Scripts {
    pub take: Script,
    pub finish: Script,
    pub give_back: Script,
    pub push: Script,
    pub usage: Script,
    pub lease: Script,
    pub renew: Script,
    pub heartbeat: Script,
}

impl Default for Scripts {
    fn default() -> Scripts {
        // Every script starts with the prelude (Redis's time, number formatting).
        let budget = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Scripts {
            take: budget(TAKE),
            finish: budget(FINISH),
            give_back: budget(GIVE_BACK),
            push: budget(PUSH),
            usage: budget(USAGE),
            lease: budget(LEASE),
            renew: budget(RENEW),
            heartbeat: budget(HEARTBEAT),
        }
    }
}
