/**
 * Lua scripts run atomically inside Redis. They share one value format per bucket key:
 *
 *   "tokens|atMs"    a cache snapshot of PostgreSQL's row, stamped on the DATABASE clock;
 *                    PostgreSQL is the authority for the bucket.
 *   "tokens|atMs|r"  Redis owns the bucket: it decided while PostgreSQL was unreachable.
 *                    Stamped on the REDIS clock (TIME). Every gateway that reads this value
 *                    lets Redis decide (through `decide` below) until it is handed back.
 *   "tokens|atMs|m"  Being handed back: a gateway holds the PostgreSQL row locked and is
 *                    merging this state into it. Redis clock.
 *   "tokens|atMs|t"  Being taken over: Redis will decide the bucket from `atMs + fence` on
 *                    (Redis clock; atMs is when the take-over began). Until then every
 *                    gateway waits, so PostgreSQL allowances still on their way here (another
 *                    gateway read the snapshot before the take-over and is committing now) are
 *                    charged to this state before Redis spends from it (docs/design.md,
 *                    "The take-over fence").
 *
 * Keeping the owner in the bucket's own value is what makes the switch back safe with many
 * gateways: whichever gateway reads the key learns who decides, so no bucket is decided by both
 * stores at once (docs/design.md, "Ownership and the hand-back").
 *
 * The arithmetic is src/core/token-bucket.ts (and migrations/003) in Lua, EPSILON included,
 * twice: in HELPERS and spelled out in WB_DECIDE_MANY (see there why): keep all of them in step.
 * Numbers travel as strings ("%.17g", exact round trip) because ioredis 6 speaks RESP3 and a
 * Lua number returned to Redis is truncated to an integer.
 */
import type { Redis } from 'ioredis'

const HELPERS = `
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local function num(x) return string.format('%.17g', x) end
-- Writes a bucket's value and returns its two numbers as formatted for it, for the reply:
-- string.format is a fair share of a script's cost, so each number is formatted once.
local function store(key, tokens, now, kind, ttl)
  local t, n = num(tokens), num(now)
  redis.call('SET', key, t .. '|' .. n .. '|' .. kind, 'EX', ttl)
  return t, n
end
local function parse(v)
  if not v then return nil end
  local a, b, kind = string.match(v, '^([^|]*)|([^|]*)|?(.*)$')
  local tokens, at = tonumber(a), tonumber(b)
  if tokens == nil or at == nil then return nil end
  return tokens, at, kind
end
local function refill(tokens, at, now, cap, rate)
  if now <= at then return math.min(tokens, cap) end
  return math.min(cap, tokens + (now - at) * rate / 1000)
end
-- Refill to now, then charge cost if the bucket can pay (EPSILON: a rounding shortfall passes).
-- Returns the tokens left and 1 (allowed) or 0.
local function spend(tokens, at, now, cap, rate, cost)
  tokens = refill(tokens, at, now, cap, rate)
  if tokens + 1e-9 >= cost then return tokens - cost, 1 end
  return tokens, 0
end
`

/**
 * The snapshot write: the cache write after PostgreSQL decided.
 * - A snapshot older than the one cached is dropped: concurrent decisions' snapshot writes can
 *   land in any order, and a stale one would show tokens that were already spent. (PostgreSQL
 *   stamps each bucket's decisions with non-decreasing times; at equal times fewer tokens is
 *   later.) The cache alone would tolerate staleness, but Redis takes over from this snapshot
 *   when PostgreSQL goes down, and must not start from a past state.
 * - A bucket that Redis owns (or is handing back) is never overwritten, because that would
 *   refund what Redis spent. Instead an allowance PostgreSQL granted meanwhile is charged to it
 *   too, so neither store's spending is lost when the two are merged (the merge keeps the
 *   lower of the two).
 * KEYS[1] bucket. ARGV: snapshot "tokens|atMs", ttl seconds, charge (cost if allowed, else 0).
 */
const WRITE_ONE = `
local function write_one(key, snapshot, ttl, charge)
  local tokens, at, kind = parse(redis.call('GET', key))
  if kind == 'r' or kind == 'm' or kind == 't' then
    charge = tonumber(charge)
    if charge > 0 then
      redis.call('SET', key, num(tokens - charge) .. '|' .. num(at) .. '|' .. kind, 'KEEPTTL')
    end
    return 0
  end
  if tokens ~= nil then
    local new_tokens, new_at = parse(snapshot)
    if at > new_at or (at == new_at and tokens <= new_tokens) then return 0 end
  end
  redis.call('SET', key, snapshot, 'EX', ttl)
  return 1
end
`
const WRITE = HELPERS + WRITE_ONE + `return write_one(KEYS[1], ARGV[1], ARGV[2], ARGV[3])`

/**
 * WRITE for several buckets in one call, in order (the gateway coalesces the snapshot writes of
 * one turn of its event loop: docs/performance.md). Standalone Redis only: the buckets' keys
 * live in different Cluster slots. KEYS: buckets. ARGV: snapshot, ttl, charge for each.
 * Returns how many snapshots were written.
 */
const WRITE_MANY = HELPERS + WRITE_ONE + `
local written = 0
for i = 1, #KEYS do written = written + write_one(KEYS[i], ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i]) end
return written`

/**
 * A decision by Redis (PostgreSQL unreachable, or the bucket is Redis-owned). KEYS[1] bucket.
 * ARGV: cost, capacity, rate per second, ttl seconds, the gateway's estimate of the database
 * clock (ms, to project a PostgreSQL snapshot), force (1: take the bucket back even while it is
 * being handed back), fence ms (how long a take-over of a snapshot or a missing key waits
 * before Redis decides; 0: at once).
 * Returns {1 allowed | 0 denied | -1 being handed back (ask PostgreSQL) | -2 being taken over
 * (ask again in the second element's ms), tokens, atMs}.
 * Every script touches one key only, so each runs in one Redis Cluster slot; the set of
 * Redis-owned buckets is kept by separate commands (redis-decider.ts).
 */
const DECIDE = HELPERS + `
local cost, cap, rate = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local fence = tonumber(ARGV[7])
local now = now_ms()
local tokens, at, kind = parse(redis.call('GET', KEYS[1]))
local take_over = false
if tokens == nil then
  -- No snapshot: the bucket is full (snapshots live until a full refill).
  tokens, at = cap, now
  take_over = true
elseif kind == 'm' then
  -- Taken back by force (PostgreSQL failed this gateway during a hand-back) without a fence: a
  -- fence here would restart with every hand-back pass that met it, and no request of the
  -- bucket would ever be decided.
  if ARGV[6] ~= '1' then return {-1, num(tokens), num(at)} end
elseif kind == 't' then
  if now < at + fence then return {-2, num(at + fence - now), num(at)} end
elseif kind ~= 'r' then
  -- A PostgreSQL snapshot (database clock): refill it to the database's "now" as the gateway
  -- estimates it (an estimate that never runs ahead), then restamp it on the Redis clock.
  tokens = refill(tokens, at, tonumber(ARGV[5]), cap, rate)
  at = now
  take_over = true
end
if now < at then now = at end
if take_over and fence > 0 then
  tokens = refill(tokens, at, now, cap, rate)
  local _, n = store(KEYS[1], tokens, now, 't', ARGV[4])
  return {-2, num(fence), n}
end
local allowed
tokens, allowed = spend(tokens, at, now, cap, rate, cost)
local t, n = store(KEYS[1], tokens, now, 'r', ARGV[4])
return {allowed, t, n}
`

/**
 * DECIDE for the buckets of one request (a plan's burst, hourly and monthly limits), all or
 * nothing: every bucket is charged, or none is. Each bucket's value is read and taken over as
 * DECIDE does (a missing key is full, a snapshot is refilled to the database's now, "r" is
 * Redis's own state, "m" answers "ask PostgreSQL" unless forced, "t" waits out its fence); then,
 * only if no bucket must wait, all of them are decided at one instant of the Redis clock and
 * every one becomes "r" (charged if all could pay; refilled but uncharged otherwise, as a refused
 * DECIDE leaves its bucket). Before it, the buckets were decided one by one and the charged ones
 * given back on a refusal: a concurrent request of the same caller could be refused by tokens
 * returned a moment later, and a refund lost with Redis lost them for good.
 * Standalone Redis (or Sentinel's master) only: the keys have different hash tags.
 * KEYS: the buckets, each once. ARGV: dbNowMs, force, fence ms, then four per key: cost,
 * capacity, rate per second, ttl seconds.
 * Returns {-1} (a bucket is being handed back: ask PostgreSQL), {-2, wait ms} (a take-over's
 * fence: ask again then; the buckets taken over now are "t"), or {1 | 0, then per key:
 * 1 can pay | 0, tokens}.
 */
const DECIDE_GROUP = HELPERS + `
local db_now, force, fence = tonumber(ARGV[1]), ARGV[2] == '1', tonumber(ARGV[3])
local now = now_ms()
local n = #KEYS
local tokens, at, take = {}, {}, {}
local taking, wait = false, 0
for i = 1, n do
  local j = 3 + 4 * (i - 1)
  local cap, rate = tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])
  local t, a, kind = parse(redis.call('GET', KEYS[i]))
  take[i] = false
  if t == nil then
    t, a, take[i] = cap, now, true
  elseif kind == 'm' then
    if not force then return {-1} end
  elseif kind == 't' then
    if now < a + fence then wait = math.max(wait, a + fence - now) end
  elseif kind ~= 'r' then
    t, a, take[i] = refill(t, a, db_now, cap, rate), now, true
  end
  if take[i] then taking = true end
  tokens[i], at[i] = t, a
end
if taking and fence > 0 then
  for i = 1, n do
    if take[i] then
      local j = 3 + 4 * (i - 1)
      store(KEYS[i], math.min(tokens[i], tonumber(ARGV[j + 2])), now, 't', ARGV[j + 4])
    end
  end
  return {-2, num(fence)}
end
if wait > 0 then return {-2, num(wait)} end
local all, left, stamp, pay = 1, {}, {}, {}
for i = 1, n do
  local j = 3 + 4 * (i - 1)
  local w = now
  if w < at[i] then w = at[i] end
  left[i] = refill(tokens[i], at[i], w, tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3]))
  stamp[i] = w
  if left[i] + 1e-9 >= tonumber(ARGV[j + 1]) then pay[i] = 1 else pay[i], all = 0, 0 end
end
local out = {all}
for i = 1, n do
  local j = 3 + 4 * (i - 1)
  local t = left[i]
  if all == 1 then t = t - tonumber(ARGV[j + 1]) end
  local ts = store(KEYS[i], t, stamp[i], 'r', ARGV[j + 4])
  out[2 * i], out[2 * i + 1] = pay[i], ts
end
return out
`

/**
 * A refund to a bucket Redis charged (PostgreSQL down): the tokens go back, never above
 * capacity. Only a Redis-owned bucket is refunded: one being handed back or handed back has its
 * state in PostgreSQL now (the refund is given up there: it errs towards fewer tokens), and a
 * missing one is full. KEYS[1] bucket. ARGV: tokens to give back, capacity, rate, ttl.
 * Returns {1, tokens} when refunded, {0, ''} otherwise.
 */
const REFUND = HELPERS + `
local tokens, at, kind = parse(redis.call('GET', KEYS[1]))
if kind ~= 'r' then return {0, ''} end
local cap = tonumber(ARGV[2])
local now = now_ms()
if now < at then now = at end
tokens = math.min(cap, refill(tokens, at, now, cap, tonumber(ARGV[3])) + tonumber(ARGV[1]))
return {1, (store(KEYS[1], tokens, now, 'r', ARGV[4]))}
`

/**
 * Hand-back, step 1 (the PostgreSQL row is locked by the caller): mark a Redis-owned bucket
 * as being handed back and return its tokens refilled to now. KEYS[1] bucket.
 * ARGV: capacity, rate, ttl. Returns {1, tokens} or {0, ''} when Redis does not own it.
 */
const HAND_BACK = HELPERS + `
local tokens, at, kind = parse(redis.call('GET', KEYS[1]))
-- A bucket still being taken over ("t") is left alone: Redis decides it once the fence is over,
-- and the next pass hands it back.
if kind ~= 'r' and kind ~= 'm' then return {0, ''} end
local now = now_ms()
if now < at then now = at end
tokens = refill(tokens, at, now, tonumber(ARGV[1]), tonumber(ARGV[2]))
return {1, (store(KEYS[1], tokens, now, 'm', ARGV[3]))}
`

/**
 * Hand-back, step 2 (after the merge committed): the bucket becomes an ordinary snapshot of
 * the merged row. KEYS[1] bucket. ARGV: snapshot "tokens|atMs", ttl.
 * Returns 1 when done (the caller then drops it from the set), 0 if Redis took it back meanwhile.
 */
const HANDED_BACK = HELPERS + `
local tokens, at, kind = parse(redis.call('GET', KEYS[1]))
if kind == 'r' or kind == 't' then return 0 end
if kind == 'm' then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
return 1
`

/**
 * Write-behind mode: Redis decides every request. Its keys are `<prefix>wb{<cacheName>:<caller>}`
 * (the bucket's hash tag: one Cluster slot) and their values `tokens|atMs|w`, on the Redis clock,
 * apart from the snapshot cache's keys, so the two modes never read each other's values.
 * KEYS: the buckets, in the order their requests came (a bucket may appear more than once).
 * ARGV: five per key: cost, capacity, rate per second, ttl seconds, seed ('' : a missing
 * bucket is a miss; else the tokens to seed it with, PostgreSQL's state refilled to the
 * database's now: used only if the bucket is still missing, since another gateway may have
 * seeded and spent from it meanwhile).
 * Returns four per key: 1 allowed | 0 denied | -2 miss, tokens, atMs, 1 seeded by this call | 0.
 * The keys are decided one after another at one instant of the Redis clock, exactly as that many
 * one-key calls would at that instant. On one server a turn of the event loop sends all its
 * requests' buckets in one call; on a Cluster each key goes alone (one slot per call), as
 * `rlWbDecide`, the same script with one key named first: ioredis's auto-pipelining on a
 * Cluster picks a command's node by its first argument, which for `rlWbDecideMany` is the key
 * count, so one-key calls of it went to the wrong node (test/redis-topologies.test.ts). A call
 * that fails part way (a key of another type) keeps the charges made before the failure (Redis
 * does not undo a script's writes): its requests are decided elsewhere, so a caller can only lose
 * tokens by it, never gain them.
 * This is the only script on write-behind's request path, so it spells out HELPERS' now_ms,
 * parse, spend and store instead of including them: Redis runs a script's whole body on every
 * call, and making those six closures and calling four of them was 1.2-1.7 µs of its 10 µs
 * (redis-benchmark, INFO commandstats: 8.6-9.4 against 9.8-10.7 µs per call). Same arithmetic.
 */
const WB_DECIDE_MANY = `
local clock = redis.call('TIME')
local clock_now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local out = {}
for i = 1, #KEYS do
  local j = 5 * i - 5
  local cost, cap, rate, seed = tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3]), ARGV[j + 5]
  local now, tokens, at = clock_now, nil, nil
  local v = redis.call('GET', KEYS[i])
  if v then
    local a, b = string.match(v, '^([^|]*)|([^|]*)')
    tokens, at = tonumber(a), tonumber(b)
  end
  local allowed, t, n, seeded = -2, '', '', 0
  if (tokens == nil or at == nil) and seed ~= '' then
    tokens, at, seeded = math.min(cap, tonumber(seed)), now, 1
  end
  if tokens ~= nil and at ~= nil then
    if now < at then now = at end
    if now > at then tokens = math.min(cap, tokens + (now - at) * rate / 1000) else tokens = math.min(tokens, cap) end
    allowed = 0
    if tokens + 1e-9 >= cost then tokens, allowed = tokens - cost, 1 end
    t, n = string.format('%.17g', tokens), string.format('%.17g', now)
    redis.call('SET', KEYS[i], t .. '|' .. n .. '|w', 'EX', ARGV[j + 4])
  end
  out[4 * i - 3], out[4 * i - 2], out[4 * i - 1], out[4 * i] = allowed, t, n, seeded
end
return out
`

/**
 * Write-behind mode, several buckets of one request (a plan's burst and hourly limits), all or
 * nothing in one atomic step: every bucket is charged, or none is. Without it the buckets were
 * charged one by one and given back on a refusal, and a concurrent request of the same caller
 * that saw one charged in between was refused for tokens it got back a moment later.
 * One call decides the groups (requests) of one turn of the event loop, one after another, as
 * WB_DECIDE_MANY does for single buckets: a call per request was a third of the gateway's and
 * Redis's extra cost for a plan of three (docs/performance.md).
 * KEYS: every group's buckets, group after group, each bucket once within its group (on one
 * server only: their hash tags differ, so on a Cluster they are in different slots and the
 * gateway decides them one by one).
 * ARGV: the group count G, then G group sizes, then five per key as WB_DECIDE_MANY's: cost,
 * capacity, rate per second, ttl seconds, seed.
 * Returns per group 1 + 4 per key: -2 when a key of the group is missing without a seed (then
 * per key 1 missing | 0 held and three blanks; nothing of the group written: the gateway loads
 * the missing ones and asks again with their seeds); else 1 (all charged) | 0 (none charged)
 * and per key 1 can pay | 0 cannot, tokens (after the charge if charged, else as they stand),
 * atMs, 1 seeded by this call | 0.
 * A group's keys are all read before any is written, so a failing GET (a key of another type)
 * leaves that group as it was (the groups before it keep their charges, as in WB_DECIDE_MANY:
 * their requests are decided elsewhere, so a caller can only lose tokens by it). A refused group
 * writes only the buckets it seeded (uncharged). The same arithmetic as WB_DECIDE_MANY, spelled
 * out for the same reason.
 */
const WB_DECIDE_GROUPS = `
local clock = redis.call('TIME')
local clock_now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local groups = tonumber(ARGV[1])
local out, o, k = {}, 0, 0
for g = 1, groups do
  local n = tonumber(ARGV[1 + g])
  local tokens, at, seeded, missing = {}, {}, {}, false
  for i = 1, n do
    local j = 1 + groups + 5 * (k + i - 1)
    local a, b
    local v = redis.call('GET', KEYS[k + i])
    if v then a, b = string.match(v, '^([^|]*)|([^|]*)') end
    local t, s = tonumber(a), tonumber(b)
    seeded[i] = 0
    if t == nil or s == nil then
      t = nil
      if ARGV[j + 5] ~= '' then
        t, s, seeded[i] = math.min(tonumber(ARGV[j + 2]), tonumber(ARGV[j + 5])), clock_now, 1
      else
        missing = true
      end
    end
    tokens[i], at[i] = t, s
  end
  out[o + 1] = -2
  if missing then
    for i = 1, n do
      local m = 0
      if tokens[i] == nil then m = 1 end
      out[o + 4 * i - 2], out[o + 4 * i - 1], out[o + 4 * i], out[o + 4 * i + 1] = m, '', '', 0
    end
  else
    local all, pay, now = 1, {}, {}
    for i = 1, n do
      local j = 1 + groups + 5 * (k + i - 1)
      local cap, rate = tonumber(ARGV[j + 2]), tonumber(ARGV[j + 3])
      local t, s, w = tokens[i], at[i], clock_now
      if w < s then w = s end
      if w > s then t = math.min(cap, t + (w - s) * rate / 1000) else t = math.min(t, cap) end
      tokens[i], now[i] = t, w
      if t + 1e-9 >= tonumber(ARGV[j + 1]) then pay[i] = 1 else pay[i], all = 0, 0 end
    end
    out[o + 1] = all
    for i = 1, n do
      local j = 1 + groups + 5 * (k + i - 1)
      local t = tokens[i]
      if all == 1 then t = t - tonumber(ARGV[j + 1]) end
      local ts, ns = string.format('%.17g', t), string.format('%.17g', now[i])
      if all == 1 or seeded[i] == 1 then redis.call('SET', KEYS[k + i], ts .. '|' .. ns .. '|w', 'EX', ARGV[j + 4]) end
      out[o + 4 * i - 2], out[o + 4 * i - 1], out[o + 4 * i], out[o + 4 * i + 1] = pay[i], ts, ns, seeded[i]
    end
  end
  o, k = o + 1 + 4 * n, k + n
end
return out
`

/**
 * Write-behind mode, after PostgreSQL decided without Redis: a bucket Redis still holds is
 * lowered to PostgreSQL's state where that has fewer tokens (both refilled to now: PostgreSQL's
 * at the database's now when read, which is earlier, so the refill between is given up), so
 * Redis refunds nothing PostgreSQL spent. A missing bucket stays missing: a miss loads the row.
 * KEYS[1] bucket. ARGV: tokens, capacity, rate, ttl. Returns 1 if lowered, 0 otherwise.
 */
const WB_LOWER = HELPERS + `
local tokens, at = parse(redis.call('GET', KEYS[1]))
if tokens == nil then return 0 end
local cap = tonumber(ARGV[2])
local now = now_ms()
if now < at then now = at end
tokens = refill(tokens, at, now, cap, tonumber(ARGV[3]))
local theirs = tonumber(ARGV[1])
if theirs >= tokens then return 0 end
store(KEYS[1], theirs, now, 'w', ARGV[4])
return 1
`

/**
 * Write-behind mode: gives a charged bucket its cost back (an upstream failure the policy
 * refunds, or a request of several buckets another bucket refused), never above capacity. A
 * missing bucket stays missing: its charge may already be in PostgreSQL, which a miss loads,
 * so nothing is given back (the caller keeps fewer tokens, never more).
 * KEYS[1] bucket. ARGV: amount, capacity, rate, ttl. Returns {1, tokens, atMs} or {0, '', ''}.
 */
const WB_REFUND = HELPERS + `
local tokens, at = parse(redis.call('GET', KEYS[1]))
if tokens == nil then return {0, '', ''} end
local cap = tonumber(ARGV[2])
local now = now_ms()
if now < at then now = at end
tokens = math.min(cap, refill(tokens, at, now, cap, tonumber(ARGV[3])) + tonumber(ARGV[1]))
local t, n = store(KEYS[1], tokens, now, 'w', ARGV[4])
return {1, t, n}
`

/**
 * The re-seed's claim (src/limiter/reseed.ts, reseed-marks.ts). KEYS: the claim; ARGV: owner,
 * ttl ms, step. `take`: 1 when the claim is the owner's (taken now, or renewed), 2 when another
 * gateway holds it. `renew`: 1, or 3 when the claim is gone or not the owner's (Redis lost it,
 * or it expired). `release`: deletes the owner's claim.
 */
const RESEED_CLAIM = `
local holder = redis.call('GET', KEYS[1])
if ARGV[3] == 'release' then
  if holder == ARGV[1] then redis.call('DEL', KEYS[1]) end
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if ARGV[3] == 'renew' then return 3 end
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 2
`

/**
 * One shard's step of a re-seed (reseed-marks.ts). KEYS: the shard's marker, its progress key
 * (one hash tag); ARGV: owner, ttl ms, step. `begin` sets the progress key; the others act only
 * where it is still the owner's (0 otherwise: the shard lost it): `renew` extends it, `end` sets
 * the marker (no expiry) and removes it, `abort` removes it.
 */
const RESEED_SHARD = `
if ARGV[3] == 'begin' then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return 1
end
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if ARGV[3] == 'renew' then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 1
end
if ARGV[3] == 'end' then redis.call('SET', KEYS[1], '1') end
redis.call('DEL', KEYS[2])
return 1
`

type Reply<T> = Promise<T>

/** The client with the scripts defined (EVALSHA, falling back to EVAL after a restart). */
export interface ScriptedRedis extends Redis {
  rlWrite: (key: string, snapshot: string, ttl: number, charge: number) => Reply<number>
  /** WRITE_MANY: the key count, the keys, then snapshot, ttl and charge per key. */
  rlWriteMany: (keyCount: number, ...keysThenArgs: Array<string | number>) => Reply<number>
  rlDecide: (key: string, cost: number, capacity: number, rate: number, ttl: number,
    dbNowMs: number, force: 0 | 1, fenceMs: number) => Reply<[number, string, string]>
  /** DECIDE_GROUP: the key count, the keys, dbNowMs, force, fence ms, then cost, capacity, rate and ttl per key. */
  rlDecideGroup: (keyCount: number, ...keysThenArgs: Array<string | number>) => Reply<Array<number | string>>
  rlHandBack: (key: string, capacity: number, rate: number, ttl: number) => Reply<[number, string]>
  rlRefund: (key: string, amount: number, capacity: number, rate: number, ttl: number) => Reply<[number, string]>
  rlHandedBack: (key: string, snapshot: string, ttl: number) => Reply<number>
  /** WB_DECIDE_MANY for one key, named first: ioredis's auto-pipelining picks a Cluster node by a command's first argument. */
  rlWbDecide: (key: string, cost: number, capacity: number, rate: number, ttl: number, seed: number | '') => Reply<Array<number | string>>
  /** WB_DECIDE_MANY: the key count, the keys, then cost, capacity, rate, ttl and seed per key; four replies per key. */
  rlWbDecideMany: (keyCount: number, ...keysThenArgs: Array<string | number>) => Reply<Array<number | string>>
  /** WB_DECIDE_GROUPS: the key count, the keys, the group count, the group sizes, then cost, capacity, rate, ttl and seed per key. */
  rlWbDecideGroups: (keyCount: number, ...keysThenArgs: Array<string | number>) => Reply<Array<number | string>>
  rlWbLower: (key: string, tokens: number, capacity: number, rate: number, ttl: number) => Reply<number>
  rlWbRefund: (key: string, amount: number, capacity: number, rate: number, ttl: number) => Reply<[number, string, string]>
  rlReseedClaim: (claim: string, owner: string, ttlMs: number, step: 'take' | 'renew' | 'release') => Reply<number>
  rlReseedShard: (marker: string, progress: string, owner: string, ttlMs: number, step: 'begin' | 'renew' | 'end' | 'abort') => Reply<number>
}

export function defineScripts (client: Redis): ScriptedRedis {
  client.defineCommand('rlWrite', { numberOfKeys: 1, lua: WRITE })
  client.defineCommand('rlWriteMany', { lua: WRITE_MANY })
  client.defineCommand('rlDecide', { numberOfKeys: 1, lua: DECIDE })
  client.defineCommand('rlDecideGroup', { lua: DECIDE_GROUP })
  client.defineCommand('rlHandBack', { numberOfKeys: 1, lua: HAND_BACK })
  client.defineCommand('rlRefund', { numberOfKeys: 1, lua: REFUND })
  client.defineCommand('rlHandedBack', { numberOfKeys: 1, lua: HANDED_BACK })
  client.defineCommand('rlWbDecide', { numberOfKeys: 1, lua: WB_DECIDE_MANY })
  client.defineCommand('rlWbDecideMany', { lua: WB_DECIDE_MANY })
  client.defineCommand('rlWbDecideGroups', { lua: WB_DECIDE_GROUPS })
  client.defineCommand('rlWbLower', { numberOfKeys: 1, lua: WB_LOWER })
  client.defineCommand('rlWbRefund', { numberOfKeys: 1, lua: WB_REFUND })
  client.defineCommand('rlReseedClaim', { numberOfKeys: 1, lua: RESEED_CLAIM })
  client.defineCommand('rlReseedShard', { numberOfKeys: 2, lua: RESEED_SHARD })
  return client as ScriptedRedis
}

/** Which store owns a bucket, read from its value's suffix (see the top of this file). */
export type Owner = 'postgres' | 'redis' | 'handing-back'

export function ownerOf (value: string): Owner {
  const n = value.length
  if (n > 2 && value.charCodeAt(n - 2) === 124 /* | */) {
    const kind = value.charCodeAt(n - 1)
    // Being taken over counts as Redis-owned: a reader asks Redis, and waits out the fence.
    if (kind === 114 /* r */ || kind === 116 /* t */) return 'redis'
    if (kind === 109 /* m */) return 'handing-back'
  }
  return 'postgres'
}
